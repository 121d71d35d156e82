"""Likeness readout in A1111 and Forge: `FastFace ID: 0.634` (or `no face`) in each image's infotext.

Life cycle (the script forwards to these; nothing here runs unless FastFace is on for the job and
the `readout` field is ticked):

* `begin` (Script.process): puts a callable under `FastFace ID` in `p.extra_generation_params`.
  Both WebUIs build each image's infotext after `postprocess_image` with
  `create_infotext(..., index=i)` and call such values with its locals (A1111 processing.py
  L802-810 and L1026-1088; Forge the same, L784-787), so the callable returns that image's value,
  looked up by (p.iteration, index). The grid (`use_main_prompt`) gets none.
* `on_image` (Script.postprocess_image, once per image): the first image loads the face models
  (once per process, `fastface.views.likeness`) and the unit's reference; then every image is embedded
  and compared. Any failure turns the readout off for the job with a note; the image is untouched.
* `finish` (Script.postprocess): replaces the callable by the per-image list (the API's `info`
  JSON serialises the dict after the job; a callable would show as null).

The FaceID unit is read from ControlNet's own script arguments (`p.script_args` between its
`args_from` and `args_to`; sd-webui-controlnet and Forge's built-in ControlNet both keep units
there, as objects or, from the API, dicts): its image(s), or on A1111 a precomputed
`ipadapter_input` embedding. Which units are identity units, and whose precomputed input the readout
can use, is the kind table's (`hosts.kinds`): a PuLID unit (A1111) counts as the FaceID unit, its
image(s) are the reference (its `ipadapter_input` holds antelopev2 and EVA-CLIP features, not the
readout's embedding).
Duck-typed; anything unexpected means "no reference" and a note. The hosts read the same units
for their note when they found no IP-Adapter layers although an enabled unit names an IP-Adapter
(`unapplied_units_note`: the WebUI dropped that unit and logged why).
"""
from __future__ import annotations

import base64
import hashlib
import io
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from ..views import likeness
from .common import IN_READOUT, OUT_OF_MEMORY, free_cached_memory, log, not_applied_note
from .kinds import FACEID, INSTANTID_EMBEDDING_MODULES, PULID, unit_kinds

ID_KEY = "FastFace ID"
SETTING = "fastface_face_models"
_REFERENCE_CACHE: dict = {}   # (pack folder, image digests) → reference embedding; small, per process
_REFERENCE_CACHE_SIZE = 16


@dataclass
class ReadoutState:
    values: dict = field(default_factory=dict)   # (iteration, batch index) → "0.634" / "no face"
    prepared: bool = False
    off: Optional[str] = None                    # why the readout stopped for this job
    model: Any = None
    reference: Optional[np.ndarray] = None
    seconds: list = field(default_factory=list)


# -- job hooks ------------------------------------------------------------------------------------------
def begin(job, p) -> None:
    p.fastface_readout = None
    if not job.args.readout:
        return
    state = ReadoutState()
    p.fastface_readout = state
    p.extra_generation_params[ID_KEY] = lambda **kw: _value_for(state, kw)


def _value_for(state: ReadoutState, infotext_locals: dict) -> Optional[str]:
    if infotext_locals.get("use_main_prompt"):
        return None
    p = infotext_locals.get("p")
    return state.values.get((int(getattr(p, "iteration", 0) or 0), int(infotext_locals.get("index") or 0)))


def on_image(p, image) -> None:
    job = getattr(p, "fastface_job", None)
    state = getattr(p, "fastface_readout", None)
    if job is None or state is None or state.off is not None or image is None:
        return
    try:
        if not state.prepared:
            _prepare(state, job, p)
            if state.off is not None:
                return
        started = time.perf_counter()
        score = state.model.score(state.reference, image)
        state.seconds.append(time.perf_counter() - started)
        key = (int(getattr(p, "iteration", 0) or 0), int(getattr(p, "batch_index", 0) or 0))
        state.values[key] = likeness.format_score(score)
    except OUT_OF_MEMORY as exc:   # FastFace's memory: the readout and FastFace off for the rest of the job
        state.off, state.model, state.reference = "out of memory", None, None
        job.fail("the likeness readout", exc, IN_READOUT)
    except Exception as exc:  # never fail the generation, never touch the image
        _stop(state, job, f"likeness readout skipped after an error ({type(exc).__name__}: {exc})")
        return
    if state.off == "out of memory":   # after the `except`: the failed attempt's tensors are freed
        free_cached_memory()


def finish(p) -> None:
    state = getattr(p, "fastface_readout", None)
    if state is None:
        return
    params = p.extra_generation_params
    if not state.values:
        params.pop(ID_KEY, None)
        return
    per_batch = max(int(getattr(p, "batch_size", 1) or 1), 1)
    iterations = max(int(getattr(p, "n_iter", 1) or 1), 1 + max(k[0] for k in state.values))
    params[ID_KEY] = [state.values.get((it, b)) for it in range(iterations) for b in range(per_batch)]
    if state.seconds:
        log.info("likeness readout: %d image(s), %.2f s each on average", len(state.seconds),
                 sum(state.seconds) / len(state.seconds))


def _stop(state: ReadoutState, job, reason: str) -> None:
    state.off = reason
    job.note(reason)


def _prepare(state: ReadoutState, job, p) -> None:
    state.prepared = True
    problems: list[str] = []
    images, embeddings, found = faceid_unit_inputs(p, problems)
    if not found:
        state.off = "no FaceID unit"  # the host already notes it; the readout has nothing to compare to
        return
    if not images and not embeddings:
        _stop(state, job, "likeness readout off: the FaceID unit has no image or embedding FastFace can read"
              + (f" ({problems[0]})" if problems else ""))
        return
    model, reason = likeness.load_for_host(model_folders())
    if model is None:
        _stop(state, job, reason)
        return
    state.model = model
    refs = [likeness.normalize(e) for e in embeddings]
    if images:
        refs.append(_cached_reference(model, images))
    state.reference = likeness.reference_embedding(refs)
    if state.reference is None:
        _stop(state, job, "likeness readout off: no face found in the FaceID unit's image(s)")


def _cached_reference(model, images: list) -> Optional[np.ndarray]:
    key = (model.folder,) + tuple(hashlib.sha1(np.ascontiguousarray(img).tobytes() + str(img.shape).encode()).hexdigest()
                                  for img in images)
    if key not in _REFERENCE_CACHE:
        if len(_REFERENCE_CACHE) >= _REFERENCE_CACHE_SIZE:
            _REFERENCE_CACHE.pop(next(iter(_REFERENCE_CACHE)))
        _REFERENCE_CACHE[key] = model.reference(images)
    return _REFERENCE_CACHE[key]


# -- where the models are ----------------------------------------------------------------------------------
def model_folders() -> list[str]:
    """Folders above a buffalo_l pack, in the order the hosts' own code looks: the FastFace setting,
    sd-webui-controlnet's annotator models folder (A1111), the WebUI's models folder (Forge keeps
    models/insightface/models/buffalo_l). `likeness.find_pack` adds $FASTFACE_FACE_MODELS first."""
    folders = []
    try:
        from modules import shared
        setting = (getattr(shared.opts, "data", None) or {}).get(SETTING)
        if setting:
            folders.append(str(setting))
    except Exception:
        pass
    for name, module in list(sys.modules.items()):
        if name.split(".")[-1] == "annotator_path" and isinstance(getattr(module, "models_path", None), str):
            folders.append(module.models_path)  # sd-webui-controlnet: <ext>/annotator/downloads or its setting
    try:
        from modules import paths
        folders.append(paths.models_path)
    except Exception:
        pass
    return list(dict.fromkeys(folders))


def register_setting(script_callbacks) -> None:
    def add_option():
        from modules import shared
        shared.opts.add_option(SETTING, shared.OptionInfo(
            "", "FastFace likeness readout: folder of the insightface buffalo_l models (empty: the WebUI's own)",
            section=("fastface", "FastFace")))
    script_callbacks.on_ui_settings(add_option)


# -- the FaceID unit -----------------------------------------------------------------------------------------
def _get(unit, name: str, default=None):
    if isinstance(unit, dict):
        return unit.get(name, default)
    return getattr(unit, name, default)


def _model_and_module(unit) -> tuple[str, str]:
    return (str(_get(unit, "model", "") or "").lower(), str(_get(unit, "module", "") or "").lower())


def identity_kinds(unit) -> list:
    """The identity-adapter kinds (`hosts.kinds`) the unit's model and module name; empty for any
    other unit."""
    return unit_kinds(*_model_and_module(unit))


def is_identity_unit(unit) -> bool:
    """A unit of an identity adapter FastFace knows: its reference image is the readout's."""
    return bool(identity_kinds(unit))


def is_faceid_unit(unit) -> bool:
    return FACEID in identity_kinds(unit)


def is_pulid_unit(unit) -> bool:
    """sd-webui-controlnet's PuLID (module `ip-adapter_pulid`, a model file named *pulid*): an identity
    adapter whose reference image the readout compares with, as for FaceID."""
    return PULID in identity_kinds(unit)


# in a unit's model or module, separators dropped (InstantID's preprocessors name no IP-Adapter)
IP_ADAPTER_WORDS = ("ipadapter", "faceid", "pulid") + INSTANTID_EMBEDDING_MODULES


def names_ip_adapter(unit) -> bool:
    """The unit's model or module names an IP-Adapter of any kind, case and separators aside:
    `ip-adapter-faceid-plusv2_sd15 [b8a6f754]`, `ip-adapter_face_id_plus`, `InsightFace+CLIP-H (IPAdapter)`,
    `ip-adapter_sd15`, `ip-adapter_pulid_sdxl_fp16`."""
    squeezed = ["".join(c for c in name if c not in " -_.") for name in _model_and_module(unit)]
    return any(word in name for name in squeezed for word in IP_ADAPTER_WORDS)


def unit_model_name(unit) -> str:
    """The unit's model as the request named it; its module when it names no model ("None")."""
    model = str(_get(unit, "model", "") or "").strip()
    return model if model.lower() not in ("", "none") else str(_get(unit, "module", "") or "").strip()


def ip_adapter_unit_models(units) -> list[str]:
    """The model names of the enabled units that name an IP-Adapter (a unit without `enabled` is off)."""
    return [unit_model_name(u) for u in units if _get(u, "enabled", False) and names_ip_adapter(u)]


def unapplied_units_note(p, args) -> Optional[str]:
    """For a job whose host installed no IP-Adapter layers: the note naming the enabled units that
    asked for one, or None when none did. The readout reads those units from the request, so it
    still compares with a FaceID or PuLID unit's image."""
    units = controlnet_units(p)
    models = ip_adapter_unit_models(units)
    if not models:
        return None
    enabled = [u for u in units if _get(u, "enabled", False)]
    readout_runs = args.readout and any(is_identity_unit(u) for u in enabled)
    return not_applied_note(models, args, readout_runs)


def controlnet_units(p) -> list:
    runner = getattr(p, "scripts", None)
    args = list(getattr(p, "script_args", None) or [])
    for script in getattr(runner, "alwayson_scripts", None) or []:
        try:
            title = str(script.title()).lower()
        except Exception:
            continue
        if title == "controlnet":
            start, end = getattr(script, "args_from", None), getattr(script, "args_to", None)
            if isinstance(start, int) and isinstance(end, int):
                return [u for u in args[start:end] if isinstance(u, dict) or hasattr(u, "enabled")]
    return []


def faceid_unit_inputs(p, problems: Optional[list] = None) -> tuple[list[np.ndarray], list[np.ndarray], bool]:
    """(reference images as RGB arrays, precomputed embeddings, whether an enabled FaceID or PuLID unit
    exists);
    what could not be read is described in `problems`."""
    problems = [] if problems is None else problems
    images: list[np.ndarray] = []
    embeddings: list[np.ndarray] = []
    found = False
    for unit in controlnet_units(p):
        kinds = identity_kinds(unit)
        if not _get(unit, "enabled", False) or not kinds:
            continue
        found = True
        precomputed = _get(unit, "ipadapter_input")
        unreadable = [kind for kind in kinds if not kind.readout_takes_precomputed]
        if precomputed is not None and unreadable:
            # e.g. PuLID's precomputed input is antelopev2 + EVA-CLIP features, not the readout's embedding
            label = unreadable[0].label
            problems.append(f"{'an' if label[0] in 'AEIOU' else 'a'} {label} unit's ipadapter_input holds no face "
                            "the readout can compare with")
            continue
        if precomputed is not None:
            embeddings += [e for e in (_embedding(x, problems) for x in _as_list(precomputed)) if e is not None]
            continue
        unit_images = _images(_get(unit, "image"))
        if not unit_images:  # ControlNet falls back to the img2img input
            init = getattr(p, "init_images", None)
            unit_images = _images(init[0]) if init else []
        if not unit_images:
            problems.append(f"image field: {type(_get(unit, 'image')).__name__}")
        images += unit_images
    return images, embeddings, found


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _embedding(item, problems: Optional[list] = None) -> Optional[np.ndarray]:
    """A FaceID face embedding from `ipadapter_input` (tensor (1, 512), FaceIdPlusInput, or base64)."""
    problems = [] if problems is None else problems
    if isinstance(item, str):
        try:
            import torch
            # A1111 replaces torch.load with its own checker (modules/safe.py), which rejects the
            # current torch zip layout and returns None; weights_only loading is safe by itself, so
            # use the original loader (ControlNet's safe globals still apply)
            loader = getattr(sys.modules.get("modules.safe"), "unsafe_torch_load", None) or torch.load
            item = loader(io.BytesIO(base64.b64decode(item.split(",", 1)[-1])), map_location="cpu",
                          weights_only=True)
            if item is None:
                raise ValueError("the loader returned nothing")
        except Exception as exc:
            problems.append(f"ipadapter_input does not load: {type(exc).__name__}: {exc}"[:200])
            return None
    item = getattr(item, "face_embed", item)  # FaceID-Plus: FaceIdPlusInput(face_embed, clip_embed)
    try:
        array = item.detach().float().cpu().numpy() if hasattr(item, "detach") else np.asarray(item, np.float32)
    except Exception as exc:
        problems.append(f"ipadapter_input of type {type(item).__name__} is not an embedding ({exc})"[:200])
        return None
    array = array.reshape(-1)
    if array.size < 64 or not np.all(np.isfinite(array)):
        problems.append(f"ipadapter_input has {array.size} values, not a face embedding")
        return None
    return array


def _images(value) -> list[np.ndarray]:
    """Unit image field → RGB uint8 arrays: arrays, PIL images, base64 strings, {"image": …, "mask": …}
    dicts, [image, mask] pairs or lists of any of those."""
    if value is None:
        return []
    if isinstance(value, dict):
        return _images(value.get("image"))
    if isinstance(value, (list, tuple)):
        # several images, or A1111's [image, mask] pair: a mask is 2-D (dropped below) or has no
        # face (a reference without a face is left out of the mean), so flattening is safe
        return [img for v in value for img in _images(v)]
    if isinstance(value, str):
        try:
            from PIL import Image
            raw = base64.b64decode(value.split(",", 1)[-1])
            with Image.open(io.BytesIO(raw)) as im:
                return [np.asarray(im.convert("RGB"))]
        except Exception:
            if os.path.isfile(value):  # a server-side path (Forge's merge gallery)
                from PIL import Image
                with Image.open(value) as im:
                    return [np.asarray(im.convert("RGB"))]
            return []
    if hasattr(value, "convert") and hasattr(value, "mode"):
        return [np.asarray(value.convert("RGB"))]
    array = np.asarray(value)
    if array.ndim == 3 and array.shape[2] in (3, 4) and array.dtype == np.uint8 and array.size:
        return [np.ascontiguousarray(array[:, :, :3])]
    return []
