"""fastface.views.likeness against small synthetic insightface models (tests/likeness_models.py).

The synthetic recogniser's output is a known function of the aligned crop, so embeddings,
similarities and reference means are checked against values computed here by hand."""
import importlib.util
import os
import threading

import numpy as np
import pytest

from fastface.views import likeness
from fastface.views.likeness import FaceModel, reference_embedding, similarity

HAVE_INSIGHTFACE = likeness.unavailable_reason() is None and importlib.util.find_spec("onnx") is not None
needs_insightface = pytest.mark.skipif(not HAVE_INSIGHTFACE,
                                       reason="insightface, onnxruntime, opencv and onnx are in the test extra")

RED = (200, 60, 40)
ORANGE = (230, 140, 70)


@pytest.fixture(scope="module")
def lm():
    import likeness_models
    return likeness_models


@pytest.fixture(scope="module")
def pack(tmp_path_factory, lm):
    return lm.build_pack(str(tmp_path_factory.mktemp("buffalo_l")))


@pytest.fixture(scope="module")
def model(pack):
    return FaceModel.from_folder(pack)


def _count_sizes(model, monkeypatch):
    tried = []
    original = model.detector.detect

    def detect(img, input_size=None, max_num=0, **kw):
        tried.append(input_size[0])
        return original(img, input_size=input_size, max_num=max_num, **kw)

    monkeypatch.setattr(model.detector, "detect", detect)
    return tried


# -- pure numpy parts ---------------------------------------------------------------------------
def test_similarity_is_cosine():
    assert similarity([1, 0], [0, 2]) == 0.0
    assert similarity([3, 4], [6, 8]) == pytest.approx(1.0)
    assert similarity([1, 1], [1, 0]) == pytest.approx(1 / np.sqrt(2))
    with pytest.raises(ValueError):
        similarity([1, 0, 0], [1, 0])
    with pytest.raises(ValueError):
        similarity([0, 0], [1, 0])


def test_reference_is_the_mean_of_normalised_embeddings():
    a, b = np.array([3.0, 4.0, 0.0]), np.array([0.0, 0.0, 10.0])
    ref = reference_embedding([a, None, b])
    hand = np.array([0.6, 0.8, 1.0]) / 2  # mean of (0.6, 0.8, 0) and (0, 0, 1)
    np.testing.assert_allclose(ref, hand / np.linalg.norm(hand), atol=1e-6)
    assert similarity(ref, a) == pytest.approx(1 / np.sqrt(2), abs=1e-6)
    assert reference_embedding([None, None]) is None
    assert reference_embedding([]) is None


def test_format_score():
    assert likeness.format_score(0.63449) == "0.634"
    assert likeness.format_score(None) == "no face"


def test_to_bgr_accepts_pil_arrays_and_rejects_other_shapes():
    from PIL import Image

    rgb = np.zeros((4, 5, 3), np.uint8)
    rgb[..., 0] = 255
    assert likeness.to_bgr(rgb)[0, 0].tolist() == [0, 0, 255]
    assert likeness.to_bgr(Image.fromarray(rgb)).tolist() == likeness.to_bgr(rgb).tolist()
    assert likeness.to_bgr(np.dstack([rgb, np.full((4, 5), 9, np.uint8)])).shape == (4, 5, 3)
    with pytest.raises(ValueError):
        likeness.to_bgr(np.zeros((4, 5, 2), np.uint8))


def test_from_folder_names_the_missing_folder(tmp_path):
    missing = tmp_path / "nowhere" / "buffalo_l"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        FaceModel.from_folder(missing)
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        FaceModel.from_folder(tmp_path)  # exists, holds no models


def test_find_pack_searches_env_then_host_folders_and_says_where(tmp_path):
    host = tmp_path / "webui" / "models"
    env = {likeness.ENV_VAR: str(tmp_path / "mine")}
    folder, searched = likeness.find_pack([str(host)], environ=env)
    assert folder is None
    assert searched[0] == str(tmp_path / "mine")
    assert str(host / "insightface" / "models" / "buffalo_l") in searched
    message = likeness.not_found_message(searched)
    assert str(tmp_path / "mine") in message and likeness.ENV_VAR in message
    pack_dir = host / "insightface" / "models" / "buffalo_l"
    pack_dir.mkdir(parents=True)
    (pack_dir / "det_10g.onnx").write_bytes(b"x")
    assert likeness.find_pack([str(host)], environ=env)[0] == str(pack_dir)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "w.onnx").write_bytes(b"x")
    assert likeness.find_pack([str(host)], environ=env)[0] == str(tmp_path / "mine")


# -- providers ---------------------------------------------------------------------------------------
class FakeOrt:
    """onnxruntime stand-in: lists CUDA; sessions fall back to CPU or fail to run, as configured."""

    def __init__(self, available, got, run_fails=False):
        self.available, self.got, self.run_fails, self.made = available, got, run_fails, []

    def get_available_providers(self):
        return list(self.available)

    class SessionOptions:
        log_severity_level = 2

    def InferenceSession(self, path, sess_options=None, providers=None):
        self.made.append(list(providers))
        ort = self

        class Session:
            def get_providers(self):
                return list(ort.got)

            def get_inputs(self):
                return [type("I", (), {"name": "x", "shape": [1, 3, "h", 112]})()]

            def run(self, names, feed):
                assert feed["x"].shape == (1, 3, 64, 112)
                if ort.run_fails:
                    raise RuntimeError("CUDA failure 35")
                return [np.zeros(1)]

        return Session()


def test_cuda_only_when_a_session_really_runs_on_it():
    assert likeness.choose_providers("m.onnx", FakeOrt(["CPUExecutionProvider"], [])) == ["CPUExecutionProvider"]
    # onnxruntime-gpu on a machine without CUDA: listed, but the session falls back to the CPU
    fallback = FakeOrt(["CUDAExecutionProvider", "CPUExecutionProvider"], ["CPUExecutionProvider"])
    assert likeness.choose_providers("m.onnx", fallback) == ["CPUExecutionProvider"]
    assert fallback.made == [["CUDAExecutionProvider", "CPUExecutionProvider"]]
    broken = FakeOrt(["CUDAExecutionProvider", "CPUExecutionProvider"],
                     ["CUDAExecutionProvider", "CPUExecutionProvider"], run_fails=True)
    assert likeness.choose_providers("m.onnx", broken) == ["CPUExecutionProvider"]
    works = FakeOrt(["CUDAExecutionProvider", "CPUExecutionProvider"], ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert likeness.choose_providers("m.onnx", works) == ["CUDAExecutionProvider", "CPUExecutionProvider"]


@needs_insightface
def test_real_onnxruntime_here_gives_the_cpu(pack):
    import onnxruntime

    chosen = likeness.choose_providers(os.path.join(pack, "w600k_r50.onnx"))
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert chosen == ["CPUExecutionProvider"]
    assert chosen[-1] == "CPUExecutionProvider"


# -- the models ---------------------------------------------------------------------------------------
@needs_insightface
def test_embedding_is_the_known_function_of_the_face(model, lm):
    for color in (RED, ORANGE):
        got = model.embed(lm.face_image(color))
        assert got.shape == (512,) and got.dtype == np.float32
        assert np.linalg.norm(got) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_allclose(got, lm.expected_embedding(color), atol=1e-4)


@needs_insightface
def test_similarity_of_two_faces_matches_the_hand_value(model, lm):
    a, b = model.embed(lm.face_image(RED)), model.embed(lm.face_image(ORANGE))
    hand = float(np.dot(lm.expected_embedding(RED), lm.expected_embedding(ORANGE)))
    assert similarity(a, b) == pytest.approx(hand, abs=1e-4)
    assert model.score(a, lm.face_image(RED)) == pytest.approx(1.0, abs=1e-5)


@needs_insightface
def test_pil_and_array_give_the_same_embedding(model, lm):
    from PIL import Image

    img = lm.face_image(RED)
    np.testing.assert_array_equal(model.embed(img), model.embed(Image.fromarray(img)))


@needs_insightface
def test_no_face_at_any_size_is_none_after_every_retry(model, lm, monkeypatch):
    tried = _count_sizes(model, monkeypatch)
    assert model.embed(np.full((640, 640, 3), 128, np.uint8)) is None
    assert tried == [640, 576, 512, 448, 384, 320]
    assert model.score(np.ones(512), np.full((300, 300, 3), 128, np.uint8)) is None


@needs_insightface
def test_retries_find_a_face_only_at_smaller_det_sizes(tmp_path, lm, monkeypatch):
    small_only = FaceModel.from_folder(lm.build_pack(str(tmp_path / "p"), max_width=512))
    tried = _count_sizes(small_only, monkeypatch)
    face = small_only.detect(lm.face_image(RED))
    assert face is not None and face.det_size == 512
    assert tried == [640, 576, 512]
    np.testing.assert_allclose(small_only.embed(lm.face_image(RED)), lm.expected_embedding(RED), atol=1e-4)
    never = FaceModel.from_folder(lm.build_pack(str(tmp_path / "q"), max_width=100))
    assert never.embed(lm.face_image(RED)) is None


@needs_insightface
def test_faces0_is_the_highest_scoring_face(model, lm):
    weak = (170, 90, 100)  # r − b small: detected with a lower score
    img = lm.face_image(weak, box=(20, 20, 270, 270))
    img[360:610, 360:610] = RED  # later in raster order, higher score
    face = model.detect(img)
    assert face.bbox[0] >= 360
    np.testing.assert_allclose(model.embed(img), lm.expected_embedding(RED), atol=1e-4)
    assert model.embed(lm.face_image(weak, box=(20, 20, 270, 270))) is not None  # it is a face on its own


@needs_insightface
def test_reference_of_several_photos_is_the_normalised_mean(model, lm):
    photos = [lm.face_image(RED), lm.face_image(ORANGE), np.full((640, 640, 3), 128, np.uint8)]
    ref = model.reference(photos)
    hand = (lm.expected_embedding(RED) + lm.expected_embedding(ORANGE)) / 2
    np.testing.assert_allclose(ref, hand / np.linalg.norm(hand), atol=1e-4)
    assert model.reference([np.full((64, 64, 3), 128, np.uint8)]) is None


@needs_insightface
def test_a_real_photo_goes_through(model):
    skdata = pytest.importorskip("skimage.data")
    photo = skdata.astronaut()  # bundled with scikit-image (an insightface dependency)
    first, again = model.embed(photo), model.embed(photo)
    assert (first is None) == (again is None)
    if first is not None:
        assert np.linalg.norm(first) == pytest.approx(1.0, abs=1e-5)
        np.testing.assert_array_equal(first, again)


@needs_insightface
def test_models_load_once_per_folder_even_from_threads(tmp_path, lm, monkeypatch):
    folder = lm.build_pack(str(tmp_path / "buffalo_l"))
    loads = []
    original = FaceModel._load.__func__

    def counting(cls, *a, **kw):
        loads.append(1)
        return original(cls, *a, **kw)

    monkeypatch.setattr(FaceModel, "_load", classmethod(counting))
    got = []
    threads = [threading.Thread(target=lambda: got.append(FaceModel.from_folder(folder))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 1 and len(got) == 4 and all(m is got[0] for m in got)


@needs_insightface
def test_a_pack_without_a_detector_is_a_file_not_found_naming_it(tmp_path, lm):
    folder = tmp_path / "only_rec"
    folder.mkdir()
    lm.build_recognizer(str(folder / "w600k_r50.onnx"))
    with pytest.raises(FileNotFoundError, match="detector") as info:
        FaceModel.from_folder(folder)
    assert str(folder) in str(info.value)


@needs_insightface
def test_load_for_host_reports_one_line_reasons(tmp_path, pack):
    model, reason = likeness.load_for_host([str(tmp_path / "none")])
    assert model is None and "searched" in reason and "\n" not in reason
    model, reason = likeness.load_for_host([pack])
    assert reason is None and model is FaceModel.from_folder(pack)


def test_unavailable_reason_names_the_missing_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "insightface" else real(name, *a))
    reason = likeness.unavailable_reason()
    assert reason.startswith("likeness readout off") and "insightface" in reason
    assert likeness.load_for_host([]) == (None, reason)
