"""Identity likeness: the paper's ID metric (insightface `buffalo_l`, cosine similarity).

    model = FaceModel.from_folder(".../insightface/models/buffalo_l")   # loaded once per process
    ref = reference_embedding([model.embed(photo) for photo in reference_photos])
    score = similarity(ref, model.embed(generated))                      # e.g. 0.634

What the authors' evaluation does (`shared/docs/fastface_reference.md` §4), and so this module:
detection is tried at det sizes 640, 576, 512, 448, 384, 320 until some face is found; the first
face (`faces[0]`, insightface orders them by detector score) is embedded by the recognition net
and L2-normalised; the score is the cosine similarity. An image with no face at any size gives
`None` (the eval counts those in FFC).

No WebUI imports; insightface, onnxruntime and cv2 are imported lazily (the host may not have
them: `unavailable_reason()` says so in one line). Models are never downloaded: the caller names
the folder, `find_pack` searches the usual host folders and reports every folder it searched.
Works with insightface 0.7.3 (what most WebUI installs pin) and 2.x: only `model_zoo.get_model`,
`SCRFD.prepare/detect`, `face_align.norm_crop` and `ArcFaceONNX.get_feat` are used.
"""
from __future__ import annotations

import glob
import importlib.util
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

log = logging.getLogger("fastface")

DET_SIZES = (640, 576, 512, 448, 384, 320)
DET_THRESH = 0.5
PACK_NAME = "buffalo_l"
ENV_VAR = "FASTFACE_FACE_MODELS"  # a pack folder (or a folder holding insightface/models/buffalo_l)
# buffalo_l's file names; other packs are routed by shape through insightface's model_zoo
DETECTOR_FILES = ("det_10g.onnx",)
RECOGNIZER_FILES = ("w600k_r50.onnx",)
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def unavailable_reason() -> Optional[str]:
    """None when insightface, onnxruntime and OpenCV can be imported, else a one-line reason."""
    missing = [name for name, module in (("insightface", "insightface"), ("onnxruntime", "onnxruntime"),
                                         ("opencv-python", "cv2"))
               if importlib.util.find_spec(module) is None]
    if missing:
        return ("likeness readout off: " + ", ".join(missing) + (" is" if len(missing) == 1 else " are")
                + " not installed in the WebUI's Python")
    return None


# -- images and vectors ---------------------------------------------------------------------------
def to_bgr(image: Any) -> np.ndarray:
    """PIL image or H×W×3 (or ×4, or H×W) uint8 RGB array → contiguous H×W×3 uint8 BGR (insightface's order)."""
    if hasattr(image, "convert") and hasattr(image, "mode"):  # PIL, without importing it
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ValueError(f"expected an H×W×3 RGB image, got shape {array.shape}")
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating) and array.size and float(array.max()) <= 1.0:
            array = array * 255.0  # 0..1 floats
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array[:, :, 2::-1])


def normalize(vector: Any) -> Optional[np.ndarray]:
    """float32 unit vector, or None for a zero / non-finite vector."""
    v = np.asarray(vector, dtype=np.float64).reshape(-1)
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0.0:
        return None
    return (v / norm).astype(np.float32)


def similarity(a: Any, b: Any) -> float:
    """Cosine similarity of two embeddings (any scale; the paper's ID score)."""
    a64 = np.asarray(a, dtype=np.float64).reshape(-1)
    b64 = np.asarray(b, dtype=np.float64).reshape(-1)
    if a64.shape != b64.shape:
        raise ValueError(f"embeddings differ in size: {a64.shape[0]} vs {b64.shape[0]}")
    denom = float(np.linalg.norm(a64) * np.linalg.norm(b64))
    if denom == 0.0 or not np.isfinite(denom):
        raise ValueError("cosine similarity of a zero vector")
    return float(np.dot(a64, b64) / denom)


def reference_embedding(embeddings: Iterable[Any]) -> Optional[np.ndarray]:
    """The reference of a FaceID unit with several images: the mean of their L2-normalised
    embeddings (as the adapters average face embeddings), itself normalised. Missing faces (None)
    are left out; None when there is no face at all."""
    unit = [n for n in (normalize(e) for e in embeddings if e is not None) if n is not None]
    if not unit:
        return None
    return normalize(np.mean(np.stack(unit), axis=0))


def format_score(score: Optional[float]) -> str:
    """The infotext value: '0.634', or 'no face'."""
    return "no face" if score is None else f"{score:.3f}"


# -- providers -------------------------------------------------------------------------------------
def _probe_feed(session) -> dict:
    feed = {}
    for inp in session.get_inputs():
        # batch 1; other free dimensions 64 (a size every detector stride divides)
        shape = [d if isinstance(d, int) and d > 0 else (1 if i == 0 else 64) for i, d in enumerate(inp.shape)]
        feed[inp.name] = np.zeros(shape, dtype=np.float32)
    return feed


def choose_providers(model_path: str, ort: Any = None) -> list[str]:
    """ONNX providers for the face models: CUDA first only when a session on it really runs.

    `get_available_providers()` lists CUDA for onnxruntime-gpu even with no GPU or no CUDA
    libraries, and a session asked for CUDA then silently falls back to CPU (environment.md §1);
    so build one, check the provider it really got, and run one inference."""
    if ort is None:
        import onnxruntime as ort
    try:
        available = list(ort.get_available_providers())
    except Exception:
        available = []
    if CUDA not in available:
        return [CPU]
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3  # the failed CUDA load is expected here, not an error
        session = ort.InferenceSession(model_path, sess_options=options, providers=[CUDA, CPU])
        if not list(session.get_providers())[:1] == [CUDA]:
            return [CPU]
        session.run(None, _probe_feed(session))
    except Exception as exc:
        log.info("likeness: CUDA for onnxruntime does not work here (%s); using the CPU", exc)
        return [CPU]
    return [CUDA, CPU]


# -- the model pack -------------------------------------------------------------------------------
def _pack_files(folder: str) -> list[str]:
    return sorted(glob.glob(os.path.join(folder, "*.onnx")))


def is_pack(folder: str) -> bool:
    return os.path.isdir(folder) and bool(_pack_files(folder))


def pack_candidates(extra: Sequence[str] = (), environ: Optional[dict] = None) -> list[str]:
    """Folders to look in, in order: $FASTFACE_FACE_MODELS (a pack, or a folder above one), then
    `extra` (the host's folders). A folder above a pack stands for <it>/insightface/models/buffalo_l,
    <it>/models/buffalo_l and <it>/buffalo_l."""
    environ = os.environ if environ is None else environ
    roots = [environ[ENV_VAR]] if environ.get(ENV_VAR) else []
    roots += [e for e in extra if e]
    out: list[str] = []
    for root in roots:
        root = os.path.abspath(os.path.expanduser(str(root)))
        for folder in (root, os.path.join(root, PACK_NAME), os.path.join(root, "models", PACK_NAME),
                       os.path.join(root, "insightface", "models", PACK_NAME)):
            if folder not in out:
                out.append(folder)
    return out


def find_pack(extra: Sequence[str] = (), environ: Optional[dict] = None) -> tuple[Optional[str], list[str]]:
    """(first folder holding ONNX models, every folder searched)."""
    searched = pack_candidates(extra, environ)
    for folder in searched:
        if is_pack(folder):
            return folder, searched
    return None, searched


def not_found_message(searched: Sequence[str]) -> str:
    where = "; ".join(searched) if searched else "no folder (none given)"
    return (f"likeness readout off: no {PACK_NAME} face models found (searched {where}); "
            f"set {ENV_VAR} to the folder that holds det_10g.onnx and w600k_r50.onnx")


@dataclass(frozen=True)
class Detection:
    det_size: int                  # the det size (width) that found it
    bbox: np.ndarray               # (4,) x1 y1 x2 y2 in image pixels
    score: float
    kps: np.ndarray                # (5, 2)


class FaceModel:
    """A detector + recognition pair from one pack folder (use `from_folder`: cached per process)."""

    _cache: dict = {}
    _cache_lock = threading.Lock()

    def __init__(self, detector, recognizer, folder: str, providers: Sequence[str]):
        self.detector = detector
        self.recognizer = recognizer
        self.folder = folder
        self.providers = list(providers)
        self._lock = threading.Lock()  # detectors keep per-size state; one image at a time
        self.det_sizes = self._det_sizes()

    # construction ----------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, path: Any, providers: Optional[Sequence[str]] = None) -> "FaceModel":
        """The pack in `path` (its detector and recognition ONNX), loaded once per process.

        Raises FileNotFoundError naming `path` when the folder or either model is missing, and
        ImportError (with the reason) when insightface / onnxruntime are not installed."""
        folder = os.path.abspath(os.path.expanduser(str(path)))
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"face model folder {path} does not exist")
        files = _pack_files(folder)
        if not files:
            raise FileNotFoundError(f"face model folder {path} holds no .onnx models "
                                    f"(expected a {PACK_NAME}-style pack: det_10g.onnx and w600k_r50.onnx)")
        key = (folder, tuple(providers) if providers else None,
               tuple((f, os.path.getmtime(f)) for f in files))
        with cls._cache_lock:
            model = cls._cache.get(key)
            if model is None:
                model = cls._load(folder, files, providers, path)
                cls._cache[key] = model
            return model

    @classmethod
    def clear_cache(cls) -> None:
        with cls._cache_lock:
            cls._cache.clear()

    @classmethod
    def _load(cls, folder: str, files: list[str], providers, shown_path) -> "FaceModel":
        reason = unavailable_reason()
        if reason:
            raise ImportError(reason)
        from insightface.model_zoo import model_zoo

        def rank(path: str, names) -> int:
            return 0 if os.path.basename(path) in names else 1

        known = [f for f in files if os.path.basename(f) in RECOGNIZER_FILES]
        if providers is None:
            providers = choose_providers((known or files)[0])
        detector = recognizer = None
        # buffalo_l's two files first: the pack's landmark/attribute models need not be loaded
        for path in sorted(files, key=lambda f: (min(rank(f, DETECTOR_FILES), rank(f, RECOGNIZER_FILES)), f)):
            if detector is not None and recognizer is not None:
                break
            name = os.path.basename(path)
            if (detector is not None and name in DETECTOR_FILES) or (recognizer is not None and name in RECOGNIZER_FILES):
                continue
            try:
                model = model_zoo.get_model(path, providers=list(providers))
            except Exception as exc:  # a broken extra file must not hide the two we need
                log.info("likeness: %s skipped (%s: %s)", name, type(exc).__name__, exc)
                continue
            task = getattr(model, "taskname", None)
            if task == "detection" and detector is None:
                detector = model
            elif task == "recognition" and recognizer is None:
                recognizer = model
        missing = [what for what, m in (("detector", detector), ("recognition", recognizer)) if m is None]
        if missing:
            raise FileNotFoundError(f"face model folder {shown_path} has no {' and no '.join(missing)} "
                                    f"ONNX model insightface can route (found {', '.join(map(os.path.basename, files))})")
        ctx = 0 if providers and providers[0] == CUDA else -1
        detector.prepare(ctx, input_size=(DET_SIZES[0], DET_SIZES[0]), det_thresh=DET_THRESH)
        recognizer.prepare(ctx)
        return cls(detector, recognizer, folder, providers or [CPU])

    def _det_sizes(self) -> tuple[tuple[int, int], ...]:
        """The retry sizes as (width, height); a detector with a fixed input size has only that one."""
        try:
            shape = self.detector.session.get_inputs()[0].shape
            if isinstance(shape[2], int) and isinstance(shape[3], int) and shape[2] > 0 and shape[3] > 0:
                return ((int(shape[3]), int(shape[2])),)
        except Exception:
            pass
        return tuple((s, s) for s in DET_SIZES)

    # use ----------------------------------------------------------------------------------------
    def detect(self, image: Any) -> Optional[Detection]:
        """faces[0] at the first det size (640 → 320) that finds any face, or None."""
        bgr = to_bgr(image)
        with self._lock:
            for size in self.det_sizes:
                bboxes, kpss = self.detector.detect(bgr, input_size=size, max_num=0)
                if bboxes is not None and len(bboxes) > 0:
                    if kpss is None:
                        raise ValueError("the face detector gives no landmarks; it cannot align faces")
                    return Detection(size[0], np.asarray(bboxes[0][:4]), float(bboxes[0][4]), np.asarray(kpss[0]))
        return None

    def embed_detection(self, image: Any, face: Detection) -> Optional[np.ndarray]:
        from insightface.utils import face_align

        bgr = to_bgr(image)
        size = int(self.recognizer.input_size[0])
        crop = face_align.norm_crop(bgr, landmark=face.kps, image_size=size)
        with self._lock:
            feature = self.recognizer.get_feat(crop)
        return normalize(feature)

    def embed(self, image: Any) -> Optional[np.ndarray]:
        """PIL RGB image or H×W×3 uint8 RGB array → L2-normalised embedding, None if no face."""
        face = self.detect(image)
        return None if face is None else self.embed_detection(image, face)

    def reference(self, images: Iterable[Any]) -> Optional[np.ndarray]:
        """Reference embedding of several photos of one person (see `reference_embedding`)."""
        return reference_embedding(self.embed(img) for img in images)

    def score(self, reference: Optional[np.ndarray], image: Any) -> Optional[float]:
        """Similarity of `image`'s face to `reference`; None when the image has no face."""
        embedding = self.embed(image)
        if embedding is None or reference is None:
            return None
        return similarity(reference, embedding)


def load_for_host(extra_folders: Sequence[str] = (), loader: Callable[[str], FaceModel] = FaceModel.from_folder
                  ) -> tuple[Optional[FaceModel], Optional[str]]:
    """(model, None) or (None, one-line reason) — what a host needs to switch the readout on/off."""
    reason = unavailable_reason()
    if reason:
        return None, reason
    folder, searched = find_pack(extra_folders)
    if folder is None:
        return None, not_found_message(searched)
    try:
        return loader(folder), None
    except Exception as exc:
        return None, f"likeness readout off: the face models in {folder} did not load ({type(exc).__name__}: {exc})"
