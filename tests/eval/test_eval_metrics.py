"""fastface.eval.metrics: the ID computed here from a local face_models pack (synthetic)."""
import json

import numpy as np
import pytest
from PIL import Image

from eval_support import rows_of, write_config
from fastface.eval.run import main


def test_local_ids_from_face_models(workspace, servers, tmp_path):
    """With `face_models`, the ID is computed here (synthetic pack): reference = the identity photo."""
    from fastface.views import likeness

    if likeness.unavailable_reason() is not None:
        pytest.skip("insightface, onnxruntime and opencv are in the test extra")
    pytest.importorskip("onnx")
    import likeness_models as lm

    red, orange = (200, 60, 40), (230, 140, 70)
    pack = lm.build_pack(str(tmp_path / "buffalo_l"))
    for path in (workspace / "ids" / "alice" / "1.png", workspace / "ids" / "bob.png"):
        Image.fromarray(lm.face_image(red)).save(path)
    a = servers(face_images={"Off": lm.face_image(red), "Realistic": lm.face_image(orange)})
    assert main(["--config", write_config(workspace, [a], face_models=pack, seeds=[1])]) == 0
    rows = rows_of(workspace)
    assert "readout" not in a.requests[0]["alwayson_scripts"]["FastFace"]["args"][0]  # not asked of the server
    hand = float(np.dot(lm.expected_embedding(red), lm.expected_embedding(orange)))
    for r in rows:
        assert r["face_found"] == "true"
        assert float(r["id"]) == pytest.approx(1.0 if r["preset"] == "Off" else hand, abs=1e-3)
    summary = json.loads((workspace / "out" / "summary.json").read_text())
    assert summary["presets"]["Realistic"]["delta_vs_off"] == pytest.approx(hand - 1.0, abs=1e-3)

