"""Out of memory in the likeness readout (after an image is made): the image is untouched, the
readout and FastFace are off for the rest of the job with a memory note, the next job is as if
it had not happened. The face models are a stand-in (the readout's own tests use real ONNX ones)."""
import base64
import io
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from fastface.hosts import readout, webui
from fastface.hosts.common import IN_READOUT, NOTE_KEY, PatchSet
from fastface.views import likeness

from test_out_of_memory_a1111 import MEMORY_WORDS, OOM
from test_readout import make_p


class FaceModels:
    """`likeness.FaceModel`'s two calls the readout makes: the reference, then a score per image."""

    folder = "stand-in"

    def __init__(self, fail_on=()):
        self.fail_on, self.scores = set(fail_on), 0

    def reference(self, images):
        return np.ones(512, np.float32)

    def score(self, reference, image):
        self.scores += 1
        if self.scores in self.fail_on:
            raise OOM("CUDA out of memory (injected)")
        return float(np.asarray(image).mean()) / 255.0


def unit():
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(buf, format="PNG")
    return {"enabled": True, "module": "ip-adapter_face_id", "model": "ip-adapter-faceid_sd15",
            "image": base64.b64encode(buf.getvalue()).decode()}


def generate(monkeypatch, models, images):
    """process → postprocess_image per image → postprocess; returns (p, job, images after)."""
    monkeypatch.setattr(likeness, "load_for_host", lambda folders=(): (models, None))
    monkeypatch.setattr(readout, "_REFERENCE_CACHE", {})
    p = make_p([unit()], batch_size=len(images))
    webui.process(p, {"enabled": True, "preset": "Realistic"})
    job = p.fastface_job
    after = []
    for i, array in enumerate(images):
        p.batch_index = i
        pp = SimpleNamespace(image=Image.fromarray(array))
        webui.postprocess_image(p, pp)
        after.append(np.asarray(pp.image))
    webui.postprocess(p, None)
    return p, job, after


IMAGES = [np.full((16, 16, 3), v, np.uint8) for v in (51, 102)]


def test_oom_in_the_readout_turns_fastface_off_with_a_memory_note(monkeypatch):
    fresh = generate(monkeypatch, FaceModels(), IMAGES)[0].extra_generation_params[readout.ID_KEY]
    assert fresh == ["0.200", "0.400"]
    models = FaceModels(fail_on={1})
    p, job, after = generate(monkeypatch, models, IMAGES)
    assert all(np.array_equal(a, b) for a, b in zip(after, IMAGES))   # the images are the WebUI's
    assert models.scores == 1   # the readout stopped for the job: the second image is not read
    assert readout.ID_KEY not in p.extra_generation_params
    note = p.extra_generation_params[NOTE_KEY]
    assert f"{MEMORY_WORDS} the likeness readout" in note and "the likeness readout off" in note
    assert "skipped after an error" not in note and "internal error" not in note
    assert job.out_of_memory == IN_READOUT and not job.active   # FastFace off for the rest of the job
    assert not PatchSet.live
    # the next job, as if nothing had happened
    assert generate(monkeypatch, FaceModels(), IMAGES)[0].extra_generation_params[readout.ID_KEY] == fresh


def test_another_readout_error_keeps_its_note(monkeypatch):
    """The generic guard is unchanged: another error stops the readout alone, FastFace stays on."""
    class Broken(FaceModels):
        def score(self, reference, image):
            raise ValueError("bad image")

    p, job, _ = generate(monkeypatch, Broken(), IMAGES)
    assert job.active and getattr(job, "out_of_memory", None) is None
    assert "likeness readout skipped after an error (ValueError: bad image)" in p.extra_generation_params[NOTE_KEY]
