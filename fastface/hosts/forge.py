"""Forge host (Forge 2 `backend/`; Forge Gen1 / reForge `ldm_patched` where the same seams exist):
DCG through the UnetPatcher's model options, AM by wrapping the built-in IP-Adapter's attn2 patches.

Contracts relied on (Forge 2 main = dfdcbab6; shared/docs/webui_api.md §3, ipadapter_impls.md §4):

* `CFGDenoiser.forward` (modules/sd_samplers_cfg_denoiser.py L156-228) calls `on_cfg_denoiser` with
  the un-batched x / sigma / text_cond / text_uncond and reads them back, then calls
  `backend.sampling.sampling_function.sampling_function`, which reads
  `p.sd_model.forge_objects.unet` on every model call. At CFG 1 `setup_conds` sets `p.uc = None`
  (processing.py L499-501; `hr_uc` L1587-1588), so text_uncond is None.
* `sampling_function` (L325-363) compiles the conditions, attaches ControlNet and c_concat, runs
  `conditioning_modifiers`; `sampling_function_inner` (L292-322) drops the uncond at CFG 1 unless
  `disable_cfg1_optimization`, runs `sampler_pre_cfg_function`s (6-tuple), evaluates
  `calc_cond_uncond_batch` (x₀ predictions; COND = 0, UNCOND = 1 per chunk in
  `transformer_options["cond_or_uncond"]`), then `cfg_result = x − sampler_cfg_function(args)`
  (a single slot), then the `sampler_post_cfg_function`s.
* `UnetPatcher.clone()` (backend/patcher/unet.py L26-35) deep-copies `model_options`, patch
  objects included. Forge resets `forge_objects` from `forge_objects_after_applying_lora` before
  every `process_before_every_sampling` and calls it twice for the hires pass (processing.py
  L1510, L1518, L1522).
* The built-in IP-Adapter (extensions-builtin/sd_forge_ipadapter/lib_ipadapter/IPAdapterPlus.py
  L161-171, L369-524) stores one `CrossAttentionPatch` per attn2 key in
  `model_options["transformer_options"]["patches_replace"]["attn2"]`; it is called as
  `patch(q, k, v, extra_options)` with projected q/k/v (backend/nn/unet.py L262-270) and holds the
  adapters (≈ 1 GB for SDXL FaceID) in parallel lists.

What FastFace does per sampling pass (only when enabled):
* clones the UNet patcher without deep-copying the IP-Adapter (the attn2 patches are wrapped
  first; the wrapper's `__deepcopy__` shares the adapter), assigns the clone to
  `p.sd_model.forge_objects.unet` (undone with the job);
* DCG: a conditioning modifier stashes the compiled negative conditioning in the step's
  model options; a pre-CFG function decides per model call how the id-only branch (negative text
  + face) is evaluated and drops the uncond rows on steps that read neither; a
  `model_function_wrapper` (sampling_function.py L270-271) carries that out inside Forge's own
  `calc_cond_uncond_batch`, so a step is ONE UNet call:
    - two branches (id-only + full): the negative rows stay in the uncond slot and are labelled
      COND inside the UNet (`cond_or_uncond`, `cond_mark`, `cond_indices`), so the IP-Adapter
      gives them the face; Forge files their output as the uncond prediction, read as ε_id;
    - three branches: a copy of the negative chunk labelled COND is appended to the call (every
      per-row input copied) and split off after the UNet;
  the cfg function returns x − `dcg_x0(...)`. A separate `calc_cond_uncond_batch` call (negative
  text in the *cond* slot) remains for a ControlNet unit that weights cond and uncond rows
  differently and for a bypassed wrapper. At CFG 1 FastFace encodes the negative prompt itself
  and hands it to Forge in `on_cfg_denoiser`. A cfg function already in the slot (e.g. Dynamic
  Thresholding) is chained: it receives a CFG problem whose plain-CFG answer is the DCG result;
  another UNet wrapper runs inside FastFace's;
* AM: every `CrossAttentionPatch`-like attn2 patch is wrapped; FaceID adapters in targeted parts
  and steps get `fastface.attention.ip_attention` with the step's transform, everything else
  runs Forge's own code;
* the sampler step comes from the sampler's `callback_state` (as on A1111), rows and UNet calls
  per step are counted by a forward pre-hook on the UNet (trace).
"""
from __future__ import annotations

import copy
import importlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from ..attention import ip_attention
from ..blocks import unet_part
from ..guidance import dcg_x0
from ..schedule import alpha_beta, branches_needed, rescale_phi
from . import preview
from .common import Job, StepTracker, log

name = "Forge"

STASH_KEY = "fastface_uncond"          # model_options key: the step's compiled negative conditioning
RAN_KEY = "fastface_uncond_ran"        # model_options key: the uncond rows were evaluated this step
FACEID_PROJECTIONS = ("ProjModelFaceIdPlus", "MLPProjModelFaceId")  # IPAdapterPlus.py L80, L101
IP_PATCH_ATTRS = ("ipadapters", "conds", "unconds", "weights", "k_key", "v_key")
CALC_MODULES = ("backend.sampling.sampling_function", "ldm_patched.modules.samplers")
FULL_SIGMA_START = 999999999.0   # percent_to_sigma(0.0) = 999999999.9: no upper bound (backend/modules/k_prediction.py L161-165)
NO_SIGMA = 999999999.9           # the σ IPAdapterPlus.py L402 assumes when the call carries none


# -- per pass state -----------------------------------------------------------------------------
@dataclass
class ForgePass(StepTracker):
    """One sampling pass (txt2img, img2img or hires) of one job on Forge."""

    index: int = 0
    is_hires: bool = False
    face: bool = False               # a FaceID IP-Adapter patch is installed in this pass's UNet
    negative: Any = None             # negative prompt schedules encoded by FastFace (CFG 1)
    calc: Optional[Callable] = None  # calc_cond_uncond_batch of this Forge
    prior_cfg: Optional[Callable] = None  # another extension's sampler_cfg_function, chained
    sampler: Any = None              # the sampler whose callback_state is patched
    batched: bool = False            # the id-only rows ride in Forge's own UNet call (wrapper installed)
    prior_wrapper: Optional[Callable] = None  # another extension's model_function_wrapper, chained
    plan: Optional[str] = None       # this model call's id-only plan (pre-CFG sets it, the cfg function clears it)
    id_x0: Any = None                # the wrapper's result for the plan: appended rows' x0, or True
    window_sigmas: Any = None        # the σ tensor of the UNet call the windows below belong to
    windows: dict = field(default_factory=dict)   # (sigma_start, sigma_end) -> (1,) 0/1 factor


def sampler_step(st: ForgePass, den: Any) -> tuple[int, int]:
    """(step, total) of the model call about to run (see `StepTracker`)."""
    return st.on_model_call(getattr(den, "steps", None), getattr(den, "total_steps", None))


# -- Forge internals, found by duck typing --------------------------------------------------------
def calc_cond_uncond_batch() -> Optional[Callable]:
    """Forge 2's `backend.sampling.sampling_function.calc_cond_uncond_batch`, else Gen1 / reForge's
    `ldm_patched.modules.samplers.calc_cond_uncond_batch`, else None."""
    for module_name in CALC_MODULES:
        try:
            module = importlib.import_module(module_name)
        except Exception:  # ImportError, or a module that fails to import outside its WebUI
            continue
        fn = getattr(module, "calc_cond_uncond_batch", None)
        if callable(fn):
            return fn
    return None


def is_ip_patch(value) -> bool:
    """Duck-typed `CrossAttentionPatch` (or a FastFace wrapper around one)."""
    return callable(value) and all(hasattr(value, a) for a in IP_PATCH_ATTRS)


def is_faceid_adapter(adapter) -> bool:
    """FaceID / FaceID-Plus(-v2) / Portrait: Forge builds them with a FaceID image projection."""
    flag = getattr(adapter, "is_faceid", None)
    if isinstance(flag, bool):
        return flag
    return type(getattr(adapter, "image_proj_model", None)).__name__ in FACEID_PROJECTIONS


def _attn2_patches(model_options) -> dict:
    try:
        return model_options["transformer_options"]["patches_replace"]["attn2"]
    except (KeyError, TypeError):
        return {}


def _copy_patch(patch):
    """A copy of a CrossAttentionPatch that shares adapters and tensors but owns its lists, so a
    later `set_new_condition` on one does not show in the other."""
    new = copy.copy(patch)
    own = getattr(new, "__dict__", None)
    if own is not None:
        for key, value in list(own.items()):
            if isinstance(value, list):
                own[key] = list(value)
    return new


# -- AM: the attn2 wrapper --------------------------------------------------------------------------
class FaceAttn2Patch:
    """Stands in for one IP-Adapter attn2 patch. FaceID adapters get the explicit face attention
    with FastFace's transform on targeted parts and steps; anything else is the original call.

    Per layer nothing is synchronised with the device and little is rebuilt: the transform comes
    from the job's cache (an int period as the softmask's groups), the face K/V projections are
    made once per pass, and the unit's start/end window is a host decision when it is the full
    range (Forge's default) or a 0/1 factor computed on the device once per UNet call."""

    _fastface_wrapper = True

    def __init__(self, inner, job: Job):
        self.inner = inner
        self.job = job
        self._split = None      # (adapter count, FaceID indices, patch without them or None)
        self._kv = {}           # FaceID index -> (k_cond, k_uncond, v_cond, v_uncond), (1, T, C) each

    # Forge deep-copies model_options on every clone: share the adapter, own the lists.
    def __deepcopy__(self, memo):
        new = FaceAttn2Patch(_copy_patch(self.inner), self.job)
        memo[id(self)] = new
        return new

    def set_new_condition(self, *args, **kwargs):
        self._split, self._kv = None, {}
        return self.inner.set_new_condition(*args, **kwargs)

    def __getattr__(self, attr):
        if attr in ("inner", "job", "_split", "_kv") or attr.startswith("__"):
            raise AttributeError(attr)
        if attr == "to":  # ModelPatcher.model_patches_to replaces patches by patch.to(device)
            inner_to = getattr(self.inner, "to")  # AttributeError when the inner patch has none
            return lambda *a, **k: FaceAttn2Patch(inner_to(*a, **k), self.job)
        return getattr(self.inner, attr)

    def _faceid_split(self):
        """(FaceID adapter indices, the patch without them), rebuilt only when the adapter list
        changes. With no other adapter left that patch has empty lists: Forge's text attention."""
        adapters = list(getattr(self.inner, "ipadapters", ()))
        if self._split is None or self._split[0] != len(adapters):
            face = [i for i, a in enumerate(adapters) if is_faceid_adapter(a)]
            others = _copy_patch(self.inner)
            keep = [i for i in range(len(adapters)) if i not in face]
            for attr, value in list(vars(others).items()):
                if isinstance(value, list) and len(value) == len(adapters):
                    setattr(others, attr, [value[i] for i in keep])
            self._split = (len(adapters), face, others)
        return self._split[1], self._split[2]

    def has_face(self) -> bool:
        return bool(self._faceid_split()[0])

    def __call__(self, n, context_attn2, value_attn2, extra_options):
        job = self.job
        st = job.current_pass
        transform = None
        if job.active and isinstance(st, ForgePass) and self.has_face():
            try:
                part = unet_part(extra_options.get("block"))
                if part is not None:
                    period = self._groups(n.shape[0], extra_options)
                    transform = job.transforms.get(part, st.step, st.total, period)
            except Exception as exc:
                job.fail("Forge attention transform", exc)
                transform = None
        if transform is None:
            if job.recording is not None and isinstance(st, ForgePass):   # "Show face attention" only
                preview.forge_record_untransformed(self, n, extra_options)
            return self.inner(n, context_attn2, value_attn2, extra_options)
        try:
            out = self._transformed(n, context_attn2, value_attn2, extra_options, transform)
        except Exception as exc:
            job.fail("Forge face attention", exc)
            return self.inner(n, context_attn2, value_attn2, extra_options)
        if out is None:  # a case FastFace leaves to Forge (noted once)
            return self.inner(n, context_attn2, value_attn2, extra_options)
        return out

    @staticmethod
    def _groups(rows: int, extra_options) -> Optional[int]:
        """The softmask's pooling period: rows are chunk-major [chunk 0 images, chunk 1 …], so
        row r pools with the rows r' ≡ r (mod rows per chunk), the branches of one image (closest
        to the authors' code). An int: no tensor is made per call."""
        chunks = max(len(extra_options.get("cond_or_uncond") or [0]), 1)
        return rows // chunks if rows % chunks == 0 else None

    def _supported(self, index: int, extra_options) -> Optional[str]:
        inner = self.inner
        weight_type = str(_at(getattr(inner, "weight_type", None), index, "original"))
        if not (weight_type.startswith("original") or weight_type.startswith("linear")):
            return f"IP-Adapter weight type {weight_type!r}"
        if _at(getattr(inner, "masks", None), index, None) is not None:
            return "an attention mask on the FaceID unit"
        if _at(getattr(inner, "unfold_batch", None), index, False):
            return "unfold batch on the FaceID unit"
        if extra_options.get("ad_params") is not None:
            return "AnimateDiff context windows"
        return None

    def _face_kv(self, index: int, labels, per_chunk: int, heads: int, dtype):
        """K/V of the face tokens per row, chunk by chunk the cond or the uncond embedding (as the
        IP-Adapter picks them, IPAdapterPlus.py L449-464), shaped (rows, heads, T, d). The
        projections are made once per pass; per call one cat each."""
        inner = self.inner
        if index not in self._kv:
            adapter = inner.ipadapters[index]
            to_k = adapter.ip_layers.to_kvs[inner.k_key]
            to_v = adapter.ip_layers.to_kvs[inner.v_key]
            cond, uncond = inner.conds[index], inner.unconds[index]
            self._kv[index] = (to_k(cond), to_k(uncond), to_v(cond), to_v(uncond))
        k_cond, k_uncond, v_cond, v_uncond = self._kv[index]
        ks = (k_cond.repeat(per_chunk, 1, 1), k_uncond.repeat(per_chunk, 1, 1))
        vs = (v_cond.repeat(per_chunk, 1, 1), v_uncond.repeat(per_chunk, 1, 1))
        ip_k = torch.cat([ks[c] for c in labels], dim=0)
        ip_v = torch.cat([vs[c] for c in labels], dim=0)
        rows = ip_k.shape[0]
        split = lambda t: t.to(dtype).view(rows, -1, heads, t.shape[-1] // heads).transpose(1, 2)  # noqa: E731
        return split(ip_k), split(ip_v)

    def _window(self, index: int, extra_options, st: "ForgePass"):
        """The unit's start/end window (IPAdapterPlus.py L401-418 skips the adapter when
        σ > sigma_start or σ < sigma_end): None = every σ is inside (Forge's default 0–100 %,
        decided on the host); else a (1,) 0/1 factor for this call's σ, made on the device once
        per UNet call and window (Forge itself reads σ with `.item()` in every layer)."""
        inner = self.inner
        start = float(_at(getattr(inner, "sigma_start", None), index, math.inf))   # Python numbers
        end = float(_at(getattr(inner, "sigma_end", None), index, -math.inf))
        if start >= FULL_SIGMA_START and end <= 0.0:
            return None
        sigmas = extra_options.get("sigmas")
        if sigmas is None:
            return 1.0 if end <= NO_SIGMA <= start else 0.0
        if st.window_sigmas is not sigmas:
            st.window_sigmas, st.windows = sigmas, {}
        key = (start, end)
        if key not in st.windows:
            s = sigmas[:1]
            st.windows[key] = ((s <= start) & (s >= end)).to(torch.float32)
        return st.windows[key]

    def _transformed(self, q, k, v, extra_options, transform):
        inner, job, st = self.inner, self.job, self.job.current_pass
        face, others = self._faceid_split()
        for i in face:
            reason = self._supported(i, extra_options)
            if reason is not None:
                job.note(f"attention transform skipped: {reason} is not supported on Forge")
                return None
        # Text branch and the other adapters through Forge's own code: the patch without its
        # FaceID adapters; with none left, Forge's attention alone (called without σ, which the
        # patch would read with `.item()` only to gate adapters it no longer has).
        if len(face) < self._split[0]:
            out = others(q, k, v, extra_options)
        else:
            out = others(q, k, v, {key: val for key, val in extra_options.items() if key != "sigmas"})

        heads = extra_options["n_heads"]          # Python ints, not tensors
        labels = extra_options["cond_or_uncond"]
        rows, tokens, width = q.shape
        per_chunk = rows // len(labels)
        qh = q.view(rows, tokens, heads, width // heads).transpose(1, 2)
        counted = False
        for i in face:
            window = self._window(i, extra_options, st)
            if isinstance(window, float) and window == 0.0:
                continue
            weight = float(_at(inner.weights, i, 1.0))     # a Python number (the unit's weight)
            linear = str(_at(getattr(inner, "weight_type", None), i, "original")).startswith("linear")
            kh, vh = self._face_kv(i, labels, per_chunk, heads, q.dtype)
            if linear:
                kh, vh = kh * weight, vh * weight
            if job.recording is None:
                face_out = ip_attention(qh, kh, vh, transform, kernels=job.kernels)
            else:   # "Show face attention": the same output, plus the maps
                face_out = preview.face_attention(qh, kh, vh, transform, kernels=job.kernels, recorder=preview.forge_recorder(
                    job, inner.ipadapters[i], rows, extra_options, transform))
            face_out = face_out.transpose(1, 2).reshape(rows, tokens, width)
            if not linear:
                face_out = face_out * weight
            if isinstance(window, torch.Tensor):
                face_out = face_out * window.to(face_out.dtype)
            else:
                counted = True            # the trace counts layers known on the host to be inside
            out = out + face_out.to(out.dtype)
        if counted:
            part = unet_part(extra_options.get("block"))
            job.layer_part = part
            job.am_calls[(st.index, st.step, part)] += 1
        return out.to(q.dtype)


def _at(values, index: int, default):
    try:
        return values[index]
    except (TypeError, IndexError, KeyError):
        return default


def _wrap(value, job: Job):
    """The value FastFace puts in its clone's attn2 dict (re-wrapping its own older wrappers)."""
    if getattr(value, "_fastface_wrapper", False):
        return FaceAttn2Patch(value.inner, job)
    if is_ip_patch(value):
        return FaceAttn2Patch(value, job)
    return value


def clone_unet(source, job: Job):
    """`source.clone()` with every IP-Adapter attn2 patch wrapped, without deep-copying adapters.

    `clone()` deep-copies `model_options`; a bare CrossAttentionPatch would take its adapter
    along. So the clone is made from a *new* model-options tree whose attn2 entries are already
    wrappers (cheap `__deepcopy__`); the source's own dicts are never modified, and its
    `model_options` attribute is put back before this returns."""
    options = source.model_options
    attn2 = _attn2_patches(options)
    wrapped = {key: _wrap(value, job) for key, value in attn2.items()}
    if all(wrapped[key] is attn2[key] for key in attn2):
        return source.clone()
    light = dict(options)
    transformer_options = dict(options["transformer_options"])
    patches_replace = dict(transformer_options["patches_replace"])
    patches_replace["attn2"] = wrapped
    transformer_options["patches_replace"] = patches_replace
    light["transformer_options"] = transformer_options
    source.model_options = light
    try:
        return source.clone()
    finally:
        source.model_options = options


# -- DCG ------------------------------------------------------------------------------------------
# How the id-only branch (negative text + face) reaches the UNet on a step, decided per model call
# by the pre-CFG function and carried out by the `model_function_wrapper` inside Forge's own
# `calc_cond_uncond_batch` (sampling_function.py L270-271; Gen1 samplers.py L282-291):
ID_IN_UNCOND = "id-only rows in the uncond slot"   # two branches: the negative rows are relabelled COND
ID_APPENDED = "id-only rows appended"              # three branches: a COND copy of the negative rows
COND, UNCOND = 0, 1                                # calc_cond_uncond_batch's chunk labels (L161-162)
ID_ONLY = 2                                        # FastFace's own label for id-only chunks
CHUNKS_KEY = "fastface_chunks"                     # transformer option: the chunks' real labels
# Why relabel rather than force the face onto UNCOND rows in FastFace's attn2 wrapper: the face
# stays Forge's own IP-Adapter code (also with AM off, for every adapter and weight type), and
# everything else inside the UNet that reads the labels sees what a separate COND call would show
# it, so the values equal the separate call's exactly.
CN_WEIGHTINGS = ("positive_advanced_weighting", "negative_advanced_weighting", "advanced_frame_weighting",
                 "advanced_sigma_weighting", "advanced_mask_weighting")  # backend/patcher/controlnet.py L87-91


def _ours(fn) -> bool:
    return bool(getattr(fn, "_fastface", False))


def _stock_cfg(args) -> torch.Tensor:
    """What `sampling_function_inner` does without a cfg function, in its "x − denoised" form."""
    return args["uncond"] + (args["cond"] - args["uncond"]) * args["cond_scale"]


def _make_stash(job: Job, st: ForgePass):
    def stash(model, x, timestep, uncond, cond, cond_scale, model_options, seed):
        if uncond is not None:
            model_options = {**model_options, STASH_KEY: uncond}
        return model, x, timestep, uncond, cond, cond_scale, model_options, seed
    stash._fastface = True
    return stash


def _uncond_droppable(job: Job, st: ForgePass, model_options) -> bool:
    """No uncond rows this step: DCG does not read them, and no one else might."""
    need = branches_needed(st.step, st.total, job.args)
    if need.uncond or (need.id_only and not st.face):   # without a face, id-only = uncond
        return False
    return st.prior_cfg is None and not model_options.get("sampler_post_cfg_function")


def _batchable(uncond) -> bool:
    """One plain negative entry (no area, mask or strength): its chunk's output is the uncond
    prediction itself (calc_cond_uncond_batch divides by a count of 1 + 1e-37 = 1), so a copy of
    the chunk labelled COND gives exactly what a separate COND call would."""
    if not isinstance(uncond, (list, tuple)) or len(uncond) != 1 or not isinstance(uncond[0], dict):
        return False
    entry = uncond[0]
    return not any(k in entry for k in ("area", "mask")) and entry.get("strength", 1.0) == 1.0


def _id_plan(job: Job, st: ForgePass, uncond_, droppable: bool) -> Optional[str]:
    """How this step's id-only rows ride in Forge's own call (None: no id-only rows are needed,
    there is no face, or they take a separate call)."""
    need = branches_needed(st.step, st.total, job.args)
    if not (need.id_only and st.face and st.batched and uncond_ is not None and _batchable(uncond_)):
        return None
    return ID_IN_UNCOND if droppable else ID_APPENDED


def unet_calls_per_evaluation(step: int, total: int, args, *, face: bool = True, batched: bool = True) -> int:
    """UNet calls Forge makes for one model evaluation of `step` with FastFace on (the numbers the
    README documents; a second-order sampler evaluates most steps twice). One when the id-only rows
    ride in Forge's own call (or are not needed); two when they need their own call: a ControlNet
    unit with cond/uncond weighting, or Forge's free-memory check splitting the batch (Forge's
    own choice, not counted here)."""
    need = branches_needed(step, total, args)
    return 2 if (args.enabled and args.dcg and face and need.id_only and not batched) else 1


def _make_pre_cfg(job: Job, st: ForgePass):
    def pre_cfg(*args):
        if len(args) == 1 and isinstance(args[0], dict):  # ComfyUI-style hook (after evaluation)
            return args[0].get("conds_out")
        model, cond, uncond_, x, timestep, model_options = args
        st.plan, st.id_x0 = None, None
        try:
            if job.active and job.current_pass is st:
                droppable = uncond_ is not None and _uncond_droppable(job, st, model_options)
                st.plan = _id_plan(job, st, uncond_, droppable)
                if droppable and st.plan is None:
                    uncond_ = None
                if len(cond) > 1:
                    job.note("AND prompts: DCG uses Forge's weighted average of the sub-prompts as the full branch")
                # RAN: the uncond slot holds a real negative prediction (not the id-only rows)
                model_options = {**model_options, RAN_KEY: uncond_ is not None and st.plan != ID_IN_UNCOND}
        except Exception as exc:
            st.plan = None
            job.fail("Forge pre-CFG", exc)
        return model, cond, uncond_, x, timestep, model_options
    pre_cfg._fastface = True
    return pre_cfg


def _relabelled(args) -> dict:
    """The wrapper's arguments with every chunk labelled COND: the IP-Adapter (and anything else
    that reads the labels inside the UNet) gives the negative rows the face, as in the authors'
    ε(∅, c_id). `calc_cond_uncond_batch` still files the output under its own (UNCOND) labels."""
    c = dict(args["c"])
    options = dict(c.get("transformer_options") or {})
    labels = [COND] * len(args["cond_or_uncond"])
    options["cond_or_uncond"] = labels
    options[CHUNKS_KEY] = list(args["cond_or_uncond"])   # what each chunk really is (the preview reads it)
    if isinstance(options.get("cond_mark"), torch.Tensor):    # per-row 0/1 (L256): all cond now
        options["cond_mark"] = torch.zeros_like(options["cond_mark"])
    if "cond_indices" in options:                            # L257
        options["cond_indices"] = sorted(list(options["cond_indices"]) + list(options.get("uncond_indices") or []))
        options["uncond_indices"] = []
    c["transformer_options"] = options
    return dict(args, c=c, cond_or_uncond=labels)


def _append_rows(value, rows: int, start: int, stop: int):
    """`value` with rows [start, stop) repeated at the end, for every per-row tensor in it
    (c_crossattn, y, c_concat, the ControlNet signals); anything else unchanged."""
    if isinstance(value, torch.Tensor):
        if value.dim() > 0 and value.shape[0] == rows:
            return torch.cat([value, value[start:stop]])
        return value
    if isinstance(value, dict):
        return {k: _append_rows(v, rows, start, stop) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_append_rows(v, rows, start, stop) for v in value)
    return value


def _with_id_rows(args) -> tuple[dict, int]:
    """The wrapper's arguments plus one chunk: a copy of the negative (UNCOND) chunk labelled
    COND, i.e. the id-only rows. Returns (new args, rows of the original call)."""
    labels = list(args["cond_or_uncond"])
    x = args["input"]
    rows = x.shape[0]
    per_chunk = rows // len(labels)
    start = labels.index(UNCOND) * per_chunk
    stop = start + per_chunk
    c = {}
    for key, value in args["c"].items():
        if key in ("transformer_options", "control_model"):
            c[key] = value
        else:
            c[key] = _append_rows(value, rows, start, stop)
    options = dict(c.get("transformer_options") or {})
    options["cond_or_uncond"] = labels + [COND]
    options[CHUNKS_KEY] = labels + [ID_ONLY]
    mark = options.get("cond_mark")
    if isinstance(mark, torch.Tensor):
        options["cond_mark"] = torch.cat([mark, torch.zeros_like(mark[start:stop])])
    if "cond_indices" in options:
        options["cond_indices"] = list(options["cond_indices"]) + list(range(rows, rows + per_chunk))
    c["transformer_options"] = options
    new = dict(args, input=torch.cat([x, x[start:stop]]),
               timestep=_append_rows(args["timestep"], rows, start, stop), c=c,
               cond_or_uncond=labels + [COND])
    return new, rows


def _make_unet_wrapper(job: Job, st: ForgePass):
    """Forge's `model_function_wrapper`: on steps with a plan, the id-only rows join the call that
    carries the negative chunk; otherwise (and for every other call, e.g. SAG's or PAG's extra
    passes after the cfg function) the call is passed on untouched."""
    def fastface_unet_wrapper(apply_model, args):
        prior = st.prior_wrapper

        def run(call_args):
            if prior is not None:
                return prior(apply_model, call_args)
            return apply_model(call_args["input"], call_args["timestep"], **call_args["c"])

        plan = st.plan
        if plan is None or not job.active or job.current_pass is not st or UNCOND not in args["cond_or_uncond"]:
            return run(args)
        try:
            if plan == ID_IN_UNCOND:
                out = run(_relabelled(args))
                st.id_x0 = True          # the uncond prediction of this step is ε_id
                return out
            new, rows = _with_id_rows(args)
            out = run(new)
            st.id_x0 = out[rows:]
            return out[:rows]
        except Exception as exc:   # e.g. out of memory with the extra rows: Forge's own call
            st.plan = None
            job.fail("Forge UNet wrapper", exc)
            return run(args)
    fastface_unet_wrapper._fastface = True
    return fastface_unet_wrapper


def _dcg(job: Job, st: ForgePass, args, plan: Optional[str], id_x0) -> torch.Tensor:
    x, sigma, model, options = args["input"], args["sigma"], args["model"], args["model_options"]
    step, total, fa = st.step, st.total, job.args
    need = branches_needed(step, total, fa)
    alpha, beta = alpha_beta(step, total, fa)
    phi = rescale_phi(step, total, fa)
    negative = options.get(STASH_KEY)
    uncond_ran = bool(options.get(RAN_KEY, negative is not None))
    full = args["cond_denoised"]
    uncond = args["uncond_denoised"] if uncond_ran else full
    if need.uncond and not uncond_ran:
        job.note("no negative prediction on some steps: DCG used α = 1 there")
        alpha = 1.0
    if alpha != beta or phi > 0:   # the id-only branch has a weight or feeds the rescale
        if plan == ID_IN_UNCOND and id_x0 is True:
            id_only = args["uncond_denoised"]     # the relabelled negative rows: ε(∅, c_id)
        elif plan == ID_APPENDED and isinstance(id_x0, torch.Tensor):
            id_only = id_x0
        elif not st.face and uncond_ran:
            id_only = uncond      # no FaceID unit: negative text alone is the id-only branch
        elif negative is not None and st.calc is not None:
            if plan is not None:
                job.note("the id-only rows could not join Forge's batch (another UNet wrapper?): one more UNet call per step")
            # the negative conditioning in the *cond* slot: labelled COND, so the IP-Adapter
            # gives these rows the face embedding (the authors' ε(∅, c_id))
            id_only, _ = st.calc(model, negative, None, x, sigma, options)
        else:
            raise RuntimeError("the negative conditioning of this step is not available")
    else:
        id_only = full
    denoised = dcg_x0(x, sigma, uncond, id_only, full, alpha, beta, phi)
    if st.prior_cfg is not None:
        scale = float(args["cond_scale"])   # a Python number (CFGDenoiser's cond_scale)
        if uncond_ran and scale != 0.0:
            # the other function sees cond' with u + s·(cond' − u) = DCG: it works on top of DCG
            cond_eff = uncond + (denoised - uncond) / scale
            chained = dict(args, cond_denoised=cond_eff, cond=x - cond_eff)
            return st.prior_cfg(chained)
        job.note("the other cfg function was skipped on steps without a negative prediction")
    return x - denoised


def _make_cfg(job: Job, st: ForgePass):
    def fastface_cfg(args):
        prior = st.prior_cfg
        plan, id_x0 = st.plan, st.id_x0
        st.plan, st.id_x0 = None, None   # later calls of this step (post-cfg passes) are not ours
        if job.active and job.current_pass is st:
            try:
                return _dcg(job, st, args, plan, id_x0)
            except Exception as exc:
                job.fail("Forge DCG", exc)
        return prior(args) if prior is not None else _stock_cfg(args)
    fastface_cfg._fastface = True
    fastface_cfg._fastface_prior = st.prior_cfg
    return fastface_cfg


def _without_ours(options, key: str) -> None:
    if isinstance(options.get(key), list):
        options[key] = [fn for fn in options[key] if not _ours(fn)]


def _cn_weighting(unet) -> Optional[str]:
    """A ControlNet unit that weights cond and uncond rows differently ("My prompt / ControlNet is
    more important", backend/patcher/controlnet.py L87-138): its signal for the negative rows is
    computed before the wrapper runs, so id-only rows batched with them would get the uncond
    weighting. Such jobs keep the separate id-only call."""
    cnet, seen = getattr(unet, "controlnet_linked_list", None), 0
    while cnet is not None and seen < 64:
        if any(getattr(cnet, attr, None) is not None for attr in CN_WEIGHTINGS):
            return type(cnet).__name__
        cnet, seen = getattr(cnet, "previous_controlnet", None), seen + 1
    return None


def _install_batching(job: Job, st: ForgePass, unet) -> None:
    """The id-only rows ride in Forge's own UNet call through `model_function_wrapper` (chained
    after another extension's wrapper, e.g. MultiDiffusion's)."""
    options = unet.model_options
    weighted = _cn_weighting(unet)
    if weighted is not None:
        job.note("a ControlNet unit weights cond and uncond differently: the id-only branch takes its own UNet call")
        return
    prior = options.get("model_function_wrapper")
    while prior is not None and _ours(prior):
        prior = getattr(prior, "_fastface_prior", None)
    st.prior_wrapper = prior
    wrapper = _make_unet_wrapper(job, st)
    wrapper._fastface_prior = prior
    options["model_function_wrapper"] = wrapper   # UnetPatcher.set_model_unet_function_wrapper (base.py L146-147)
    st.batched = True


def _install_dcg(job: Job, p, st: ForgePass, unet) -> bool:
    options = unet.model_options
    for key in ("conditioning_modifiers", "sampler_pre_cfg_function"):
        _without_ours(options, key)   # a clone of FastFace's own earlier clone (hires restart)
    prior = options.get("sampler_cfg_function")
    while prior is not None and _ours(prior):
        prior = getattr(prior, "_fastface_prior", None)
    if prior is not None:
        owner = getattr(prior, "__qualname__", type(prior).__name__)
        job.note(f"another extension's cfg function ({owner}) is chained after DCG")
    st.prior_cfg = prior
    if not hasattr(unet, "add_conditioning_modifier") or not hasattr(unet, "set_model_sampler_cfg_function"):
        job.note("this Forge has no conditioning modifiers or cfg function: DCG is off")
        return False
    unet.add_conditioning_modifier(_make_stash(job, st))
    add_pre = getattr(unet, "add_sampler_pre_cfg_function", None) or getattr(unet, "set_model_sampler_pre_cfg_function", None)
    if add_pre is not None:
        add_pre(_make_pre_cfg(job, st))
        if st.face:
            _install_batching(job, st, unet)
    unet.set_model_sampler_cfg_function(_make_cfg(job, st), disable_cfg1_optimization=True)
    unet.model_options["disable_cfg1_optimization"] = True
    return True


# -- the negative conditioning at CFG 1 -----------------------------------------------------------
def encode_negative(p, hires: bool):
    """The pass's negative prompts encoded the way `setup_conds` would have done at CFG ≠ 1
    (processing.py L490-505 / L1576-1590): prompt schedules for `reconstruct_cond_batch`."""
    from modules import prompt_parser  # host import, inside the WebUI only

    prompts = list(getattr(p, "hr_negative_prompts" if hires else "negative_prompts", None) or [])
    if not prompts:
        prompts = [""] * len(getattr(p, "hr_prompts" if hires else "prompts", None) or [""])
    width = getattr(p, "hr_upscale_to_x", None) if hires else getattr(p, "width", None)
    height = getattr(p, "hr_upscale_to_y", None) if hires else getattr(p, "height", None)
    kwargs = dict(width=width, height=height, is_negative_prompt=True)
    distilled = getattr(p, "hr_distilled_cfg" if hires else "distilled_cfg_scale", None)
    try:
        prompts = prompt_parser.SdConditioning(prompts, distilled_cfg_scale=distilled, **kwargs)
    except TypeError:  # Gen1 / A1111-style signature
        prompts = prompt_parser.SdConditioning(prompts, **kwargs)
    steps = int(getattr(p, "firstpass_steps", None) or getattr(p, "steps", 1) or 1)
    hires_steps = None
    if hires:
        hires_steps = int(getattr(p, "hr_second_pass_steps", 0) or getattr(p, "steps", 1)) \
            * max(int(getattr(p, "step_multiplier", 1) or 1), 1)
    network_data = getattr(p, "hr_extra_network_data" if hires else "extra_network_data", None)
    with_cache = getattr(p, "get_conds_with_caching", None)
    if callable(with_cache):
        try:
            return with_cache(prompt_parser.get_learned_conditioning, prompts, steps, [[None, None, None]],
                              network_data, hires_steps)
        except TypeError:
            pass
    return prompt_parser.get_learned_conditioning(p.sd_model, prompts, steps, hires_steps)


def _negative_at(st: ForgePass, denoiser):
    from modules import prompt_parser

    return prompt_parser.reconstruct_cond_batch(st.negative, int(getattr(denoiser, "step", 0) or 0))


# -- callbacks ------------------------------------------------------------------------------------
def on_cfg_denoiser(params) -> None:
    """Registered once at import: the sampler step of this model call, and the negative
    conditioning at CFG 1. A no-op for jobs that are not running a Forge pass."""
    denoiser = getattr(params, "denoiser", None)
    job = getattr(getattr(denoiser, "p", None), "fastface_job", None)
    if job is None or not job.active:
        return
    st = job.current_pass
    if not isinstance(st, ForgePass):
        return
    try:
        step, total = sampler_step(st, denoiser)
        st.total = total
        if st.negative is not None and getattr(params, "text_uncond", None) is None:
            params.text_uncond = _negative_at(st, denoiser)
    except Exception as exc:
        job.fail("Forge on_cfg_denoiser", exc)


def register_callbacks(script_callbacks) -> None:
    script_callbacks.on_cfg_denoiser(on_cfg_denoiser)


# -- entry points called by the script ---------------------------------------------------------
def _install_step_tracking(job: Job, p, st: ForgePass) -> None:
    sampler = getattr(p, "sampler", None)
    original = getattr(sampler, "callback_state", None)
    if sampler is None or not callable(original):
        job.note("this sampler has no step callback: steps are counted from model calls")
        return
    st.sampler = sampler

    def callback_state(d):
        if job.current_pass is st:
            try:
                st.on_callback(d.get("i", 0))
            except Exception as exc:  # never fail the generation
                job.fail("Forge step callback", exc)
        return original(d)

    job.patches.setattr(sampler, "callback_state", callback_state)


def _install_row_counter(job: Job, unet) -> None:
    module = getattr(getattr(unet, "model", None), "diffusion_model", None)
    if not isinstance(module, torch.nn.Module):
        return

    def count(_module, args, kwargs):
        st = job.current_pass
        if isinstance(st, ForgePass) and job.active:
            x = args[0] if args else kwargs.get("x")
            if hasattr(x, "shape"):
                job.count_unet_call(st.index, st.step, int(x.shape[0]))   # shape: Python ints

    handle = module.register_forward_pre_hook(count, with_kwargs=True)
    job.patches.on_undo(handle.remove)


def start_pass(job: Job, p) -> None:
    """process_before_every_sampling (after the built-in ControlNet): patch this pass's UNet.

    Idempotent: Forge 2 calls it twice for the hires pass (the first result is thrown away); a
    restart of a pass before any model call keeps the pass index."""
    try:
        _start_pass(job, p)
    except Exception as exc:  # never into Forge: stock sampling for the rest of the job
        job.current_pass = None
        job.fail("Forge set-up", exc)


def _start_pass(job: Job, p) -> None:
    is_hires = bool(getattr(p, "is_hr_pass", False))
    previous = job.current_pass
    job.current_pass = None
    if is_hires and not job.args.hires:
        job.note("hires pass left to the WebUI (FastFace's hires option is off)")
        return
    objects = p.sd_model.forge_objects
    source = objects.unet
    restart = isinstance(previous, ForgePass) and previous.is_hires == is_hires and previous.calls == 0
    if restart:
        index = previous.index
    else:
        index = job.passes
        job.passes += 1
    st = ForgePass(index=index, is_hires=is_hires)
    unet = clone_unet(source, job)
    patches = [v for v in _attn2_patches(unet.model_options).values() if getattr(v, "_fastface_wrapper", False)]
    st.face = any(v.has_face() for v in patches)
    if not st.face:
        job.note("no FaceID IP-Adapter unit in ControlNet: DCG without the face branch, no attention transform")
    if job.args.dcg:
        st.calc = calc_cond_uncond_batch()
        if st.calc is None:
            job.note("Forge's calc_cond_uncond_batch was not found: DCG is off")
        elif _install_dcg(job, p, st, unet):
            uc = getattr(p, "hr_uc" if is_hires else "uc", "missing")
            if uc is None:   # CFG 1: Forge built no negative conditioning at all
                st.negative = encode_negative(p, is_hires)
                # the normal case for distilled models: logged, not worth an infotext note
                log.info("CFG 1: FastFace encoded the negative prompt for DCG")
    _install_step_tracking(job, p, st)
    if "rows" not in job.installed:
        job.installed.add("rows")
        _install_row_counter(job, unet)
    job.layer_part = None
    job.patches.setattr(objects, "unet", unet)
    job.current_pass = st


def end_job(job: Job, p) -> None:
    job.current_pass = None
    if job.patches is not None:
        job.patches.undo()
