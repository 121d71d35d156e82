"""Opt-in: the likeness readout on a real, running A1111 or Forge (see test_real_webui.py for the
server variables; FASTFACE_FACEID_UNIT should carry an image or an embedding for a FaceID unit).

    FASTFACE_READOUT   "on" (default): the server has insightface and a buffalo_l pack, so every
                       image carries `FastFace ID`; "absent": it has not, so the readout is off
                       with its note and the image is unchanged.
"""
from __future__ import annotations

import os
import re

import pytest

from test_real_webui import URL, png_pixels, txt2img  # noqa: F401  (URL: skip marker lives there)

pytestmark = pytest.mark.skipif(not URL, reason="FASTFACE_WEBUI_URL not set (opt-in real-WebUI tests)")
EXPECT = os.environ.get("FASTFACE_READOUT", "on").lower()
ID_RE = re.compile(r"FastFace ID: (no face|-?\d\.\d{3})(?:,|$)")


def images_and_texts(resp):
    info = resp["info_json"]
    first = int(info.get("index_of_first_image", 0) or 0)
    return resp["images"][first:first + 2], info["infotexts"][first:first + 2]


@pytest.mark.parametrize("preset", ["Realistic", "Off"])
def test_readout_per_image_for_a_batch_of_two(preset):
    resp = txt2img({"enabled": True, "preset": preset}, batch_size=2)
    _, texts = images_and_texts(resp)
    assert len(texts) == 2
    if EXPECT == "absent":
        for text in texts:
            assert "FastFace ID" not in text
            assert "likeness readout off" in text
        return
    values = [ID_RE.search(t).group(1) for t in texts]
    assert resp["info_json"]["extra_generation_params"]["FastFace ID"] == values  # the API's per-image list
    print(f"{preset}: FastFace ID per image {values}")


def test_off_preset_pixels_equal_fastface_disabled():
    off = txt2img({"enabled": True, "preset": "Off"}, batch_size=2)
    disabled = txt2img({"enabled": False}, batch_size=2)
    (a, _), (b, texts_disabled) = images_and_texts(off), images_and_texts(disabled)
    assert [png_pixels(x) for x in a] == [png_pixels(x) for x in b]
    for text in texts_disabled:  # disabled writes nothing at all
        assert "FastFace" not in text


def test_readout_off_writes_no_id_and_keeps_pixels():
    on = txt2img({"enabled": True, "preset": "Off"})
    off = txt2img({"enabled": True, "preset": "Off", "readout": False})
    assert png_pixels(on["images"][0]) == png_pixels(off["images"][0])
    text = off["info_json"]["infotexts"][0]
    assert "FastFace ID" not in text and "readout=false" in text
