"""The likeness readout through the WebUI glue (process → postprocess_image → infotext → postprocess),
with ControlNet's script arguments as A1111 / Forge hold them and the synthetic face models."""
import base64
import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from fastface.views import likeness
from fastface.hosts import readout, webui
from fastface.hosts.common import NOTE_KEY
from fastface.infotext import INFOTEXT_KEY

pytestmark = pytest.mark.skipif(likeness.unavailable_reason() is not None,
                                reason="insightface, onnxruntime and opencv are in the test extra")

RED, ORANGE = (200, 60, 40), (230, 140, 70)


@pytest.fixture(scope="module")
def lm():
    pytest.importorskip("onnx")
    import likeness_models
    return likeness_models


@pytest.fixture(scope="module")
def pack(tmp_path_factory, lm):
    return lm.build_pack(str(tmp_path_factory.mktemp("models") / "buffalo_l"))


@pytest.fixture
def models_at(monkeypatch):
    def point(folder):
        monkeypatch.setenv(likeness.ENV_VAR, str(folder))
        monkeypatch.setattr(readout, "model_folders", lambda: [])
    return point


def b64png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


class ControlNetScript:
    def __init__(self, start, end):
        self.args_from, self.args_to = start, end

    def title(self):
        return "ControlNet"


class FastFaceScript:
    args_from, args_to = 0, 1

    def title(self):
        return "FastFace"


def make_p(units, batch_size=2, n_iter=1):
    script_args = [None] + list(units)
    runner = SimpleNamespace(alwayson_scripts=[FastFaceScript(), ControlNetScript(1, 1 + len(units))])
    return SimpleNamespace(extra_generation_params={}, sd_model=SimpleNamespace(), scripts=runner,
                           script_args=script_args, batch_size=batch_size, n_iter=n_iter, iteration=0, batch_index=0)


def faceid_unit(lm, **extra):
    unit = {"enabled": True, "module": "ip-adapter_face_id", "model": "ip-adapter-faceid_sd15 [0a1b2c3d]",
            "image": b64png(lm.face_image(RED))}
    unit.update(extra)
    return unit


def generate(p, images, **ff):
    """What A1111 / Forge do: process, per image postprocess_image then create_infotext, postprocess."""
    webui.process(p, {"enabled": True, "preset": "Off", **ff})
    infotexts = []
    for i, array in enumerate(images):
        p.batch_index = i
        pp = SimpleNamespace(image=Image.fromarray(array))
        webui.postprocess_image(p, pp)
        assert np.array_equal(np.asarray(pp.image), array)  # the readout never touches the image
        values = {}
        for key, value in p.extra_generation_params.items():
            values[key] = value(p=p, index=i, use_main_prompt=False, iteration=0) if callable(value) else value
        infotexts.append(values)
    grid = p.extra_generation_params.get(readout.ID_KEY)
    grid_value = grid(p=p, index=0, use_main_prompt=True) if callable(grid) else None
    webui.postprocess(p, None)
    return infotexts, grid_value


def test_each_image_gets_its_own_id(lm, pack, models_at):
    models_at(pack)
    p = make_p([faceid_unit(lm)], batch_size=3)
    texts, grid = generate(p, [lm.face_image(RED), lm.face_image(ORANGE), np.full((640, 640, 3), 128, np.uint8)])
    hand = float(np.dot(lm.expected_embedding(RED), lm.expected_embedding(ORANGE)))
    assert [t.get(readout.ID_KEY) for t in texts] == ["1.000", f"{hand:.3f}", "no face"]
    assert grid is None  # the grid has no single face
    assert p.extra_generation_params[readout.ID_KEY] == ["1.000", f"{hand:.3f}", "no face"]  # the API's info
    assert texts[0][INFOTEXT_KEY] == "preset=Off"


def test_a_second_batch_is_indexed_by_iteration(lm, pack, models_at):
    models_at(pack)
    p = make_p([faceid_unit(lm)], batch_size=1, n_iter=2)
    webui.process(p, {"enabled": True, "preset": "Realistic"})
    value = p.extra_generation_params[readout.ID_KEY]
    for iteration, color in enumerate((RED, None)):
        p.iteration, p.batch_index = iteration, 0
        image = lm.face_image(color) if color else np.full((640, 640, 3), 128, np.uint8)
        webui.postprocess_image(p, SimpleNamespace(image=Image.fromarray(image)))
        assert value(p=p, index=0, use_main_prompt=False) == ("1.000" if color else "no face")
    webui.postprocess(p, None)
    assert p.extra_generation_params[readout.ID_KEY] == ["1.000", "no face"]


def test_precomputed_embedding_is_the_reference(lm, pack, models_at):
    torch = pytest.importorskip("torch")
    models_at(pack)
    embedding = torch.tensor(lm.expected_embedding(ORANGE), dtype=torch.float32)[None]
    unit = faceid_unit(lm, image=None, ipadapter_input=[embedding])
    texts, _ = generate(make_p([unit], batch_size=1), [lm.face_image(ORANGE)])
    assert texts[0][readout.ID_KEY] == "1.000"


def test_several_unit_images_give_the_mean_reference(lm, pack, models_at):
    models_at(pack)
    unit = faceid_unit(lm, image=[{"image": b64png(lm.face_image(RED)), "mask": None},
                                  {"image": b64png(lm.face_image(ORANGE)), "mask": None}])
    texts, _ = generate(make_p([unit], batch_size=1), [lm.face_image(RED)])
    ref = lm.expected_embedding(RED) + lm.expected_embedding(ORANGE)
    hand = float(np.dot(ref / np.linalg.norm(ref), lm.expected_embedding(RED)))
    assert texts[0][readout.ID_KEY] == f"{hand:.3f}"


def test_forge_style_unit_object_with_image_mask_pair(lm, pack, models_at):
    models_at(pack)
    unit = SimpleNamespace(enabled=True, module="InsightFace+CLIP-H (IPAdapter)", model="ip-adapter-faceid-plusv2_sdxl",
                           image={"image": lm.face_image(RED), "mask": np.zeros((640, 640, 3), np.uint8)},
                           ipadapter_input=None)
    texts, _ = generate(make_p([unit], batch_size=1), [lm.face_image(RED)])
    assert texts[0][readout.ID_KEY] == "1.000"


def test_missing_models_leave_a_note_and_no_id(lm, tmp_path, models_at):
    models_at(tmp_path / "empty")
    texts, _ = generate(make_p([faceid_unit(lm)], batch_size=2), [lm.face_image(RED)] * 2)
    assert all(t.get(readout.ID_KEY) is None for t in texts)
    assert "no buffalo_l face models found" in texts[0][NOTE_KEY] and str(tmp_path / "empty") in texts[0][NOTE_KEY]
    assert readout.ID_KEY not in p_params(texts)


def p_params(texts):
    return {k for t in texts for k, v in t.items() if v is not None}


def test_disabled_or_readout_off_runs_nothing(lm, pack, models_at, monkeypatch):
    models_at(pack)
    calls = []
    monkeypatch.setattr(likeness.FaceModel, "score", lambda *a: calls.append(a))
    p = make_p([faceid_unit(lm)], batch_size=1)
    webui.process(p, {"enabled": False, "preset": "Off"})
    webui.postprocess_image(p, SimpleNamespace(image=Image.fromarray(lm.face_image(RED))))
    webui.postprocess(p, None)
    assert p.extra_generation_params == {} and calls == []
    texts, _ = generate(make_p([faceid_unit(lm)], batch_size=1), [lm.face_image(RED)], readout=False)
    assert readout.ID_KEY not in texts[0] and calls == []
    assert "readout=false" in texts[0][INFOTEXT_KEY]


def test_no_faceid_unit_means_no_readout_and_no_readout_note(lm, pack, models_at):
    models_at(pack)
    canny = {"enabled": True, "module": "canny", "model": "control_v11p_sd15_canny", "image": b64png(lm.face_image(RED))}
    texts, _ = generate(make_p([canny], batch_size=1), [lm.face_image(RED)])
    assert texts[0].get(readout.ID_KEY) is None
    assert "likeness" not in (texts[0].get(NOTE_KEY) or "")


def test_reference_without_a_face_is_a_note(lm, pack, models_at):
    models_at(pack)
    unit = faceid_unit(lm, image=b64png(np.full((256, 256, 3), 128, np.uint8)))
    texts, _ = generate(make_p([unit], batch_size=1), [lm.face_image(RED)])
    assert texts[0].get(readout.ID_KEY) is None
    assert "no face found in the FaceID unit" in texts[0][NOTE_KEY]


def test_an_error_skips_the_readout_with_a_note(lm, pack, models_at, monkeypatch):
    models_at(pack)

    def broken(*a):
        raise RuntimeError("onnx went away")

    monkeypatch.setattr(likeness.FaceModel, "score", broken)
    texts, _ = generate(make_p([faceid_unit(lm)], batch_size=2), [lm.face_image(RED)] * 2)
    assert texts[1].get(readout.ID_KEY) is None
    assert "likeness readout skipped after an error" in texts[1][NOTE_KEY]


def test_without_insightface_the_readout_is_off_with_its_note(lm, pack, models_at, monkeypatch):
    models_at(pack)
    reason = "likeness readout off: insightface is not installed in the WebUI's Python"
    monkeypatch.setattr(likeness, "unavailable_reason", lambda: reason)
    texts, _ = generate(make_p([faceid_unit(lm)], batch_size=1), [lm.face_image(RED)])
    assert texts[0].get(readout.ID_KEY) is None
    assert "insightface is not installed" in texts[0][NOTE_KEY]


def test_base64_embedding_loads_past_a1111s_checked_torch_load(lm, pack, models_at, monkeypatch):
    """A1111 swaps torch.load for modules.safe.load, which returns None for current torch files;
    the original stays at modules.safe.unsafe_torch_load."""
    import sys
    import types

    torch = pytest.importorskip("torch")
    models_at(pack)
    buf = io.BytesIO()
    torch.save(torch.tensor(lm.expected_embedding(ORANGE), dtype=torch.float32)[None], buf)
    safe = types.ModuleType("modules.safe")
    safe.unsafe_torch_load = torch.load
    monkeypatch.setitem(sys.modules, "modules.safe", safe)
    monkeypatch.setattr(torch, "load", lambda *a, **k: None)
    unit = faceid_unit(lm, image=None, ipadapter_input=[base64.b64encode(buf.getvalue()).decode()])
    texts, _ = generate(make_p([unit], batch_size=1), [lm.face_image(ORANGE)])
    assert texts[0][readout.ID_KEY] == "1.000"


def test_a_pulid_unit_image_is_the_reference(lm, pack, models_at):
    """sd-webui-controlnet's PuLID unit (issue 13): its image is the readout's reference, as for FaceID;
    its precomputed `ipadapter_input` (antelopev2 + EVA-CLIP features) is not an embedding to compare with."""
    models_at(pack)
    unit = {"enabled": True, "module": "ip-adapter_pulid", "model": "ip-adapter_pulid_sdxl_fp16 [1a2b3c4d]",
            "image": b64png(lm.face_image(RED)), "pulid_mode": "Fidelity"}
    texts, _ = generate(make_p([unit], batch_size=2), [lm.face_image(RED), lm.face_image(ORANGE)])
    hand = float(np.dot(lm.expected_embedding(RED), lm.expected_embedding(ORANGE)))
    assert [t.get(readout.ID_KEY) for t in texts] == ["1.000", f"{hand:.3f}"]
    precomputed = dict(unit, image=None, ipadapter_input=["not an embedding"])
    problems = []
    images, embeddings, found = readout.faceid_unit_inputs(make_p([precomputed]), problems)
    assert found and not images and not embeddings
    assert problems == ["a PuLID unit's ipadapter_input holds no face the readout can compare with"]


@pytest.mark.parametrize("ip_unit", [
    {"module": "instant_id_face_embedding", "model": "ip-adapter_instant_id_sdxl [eb2d3ec0]"},   # A1111
    {"module": "InsightFace (InstantID)", "model": "ip-adapter_instant_id_sdxl"},                 # Forge 2 / Neo
], ids=["a1111", "forge"])
def test_the_instantid_ip_units_image_is_the_reference_and_the_keypoint_unit_is_not(lm, pack, models_at, ip_unit):
    """InstantID (issue 22): the IP-Adapter unit's image is the readout's reference; the keypoint
    ControlNet unit after it (its pose drawing, here another face) is not an identity unit; a
    precomputed `ipadapter_input` (an antelopev2 embedding) is not the readout's embedding."""
    models_at(pack)
    unit = dict(ip_unit, enabled=True, image=b64png(lm.face_image(RED)))
    keypoints = {"enabled": True, "module": "instant_id_face_keypoints", "model": "control_instant_id_sdxl [c5c25a50]",
                 "image": b64png(lm.face_image(ORANGE))}
    texts, _ = generate(make_p([unit, keypoints], batch_size=2), [lm.face_image(RED), lm.face_image(ORANGE)])
    hand = float(np.dot(lm.expected_embedding(RED), lm.expected_embedding(ORANGE)))
    assert [t.get(readout.ID_KEY) for t in texts] == ["1.000", f"{hand:.3f}"]
    problems = []
    images, embeddings, found = readout.faceid_unit_inputs(make_p([dict(unit, image=None, ipadapter_input=["x"])]),
                                                           problems)
    assert found and not images and not embeddings
    assert problems == ["an InstantID unit's ipadapter_input holds no face the readout can compare with"]
    assert readout.faceid_unit_inputs(make_p([keypoints]))[2] is False
