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
  model options; a pre-CFG function drops the uncond rows on steps that do not read them; the
  cfg function evaluates the id-only branch (negative text in the *cond* slot, so the
  IP-Adapter gives it the face) with `calc_cond_uncond_batch` on the steps that need it and
  returns x − `dcg_x0(...)`. At CFG 1 FastFace encodes the negative prompt itself and hands it
  to Forge in `on_cfg_denoiser`. A cfg function already in the slot (e.g. Dynamic
  Thresholding) is chained: it receives a CFG problem whose plain-CFG answer is the DCG result;
* AM: every `CrossAttentionPatch`-like attn2 patch is wrapped; FaceID adapters in targeted parts
  and steps get `fastface.attention.ip_attention` with the step's transform, everything else
  runs Forge's own code;
* the sampler step comes from the sampler's `callback_state` (as on A1111), rows per step are
  counted by a forward pre-hook on the UNet (trace).
"""
from __future__ import annotations

import copy
import importlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from ..attention import ip_attention, transform_for
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
    with FastFace's transform on targeted parts and steps; anything else is the original call."""

    _fastface_wrapper = True

    def __init__(self, inner, job: Job):
        self.inner = inner
        self.job = job

    # Forge deep-copies model_options on every clone: share the adapter, own the lists.
    def __deepcopy__(self, memo):
        new = FaceAttn2Patch(_copy_patch(self.inner), self.job)
        memo[id(self)] = new
        return new

    def set_new_condition(self, *args, **kwargs):
        return self.inner.set_new_condition(*args, **kwargs)

    def __getattr__(self, attr):
        if attr in ("inner", "job") or attr.startswith("__"):
            raise AttributeError(attr)
        if attr == "to":  # ModelPatcher.model_patches_to replaces patches by patch.to(device)
            inner_to = getattr(self.inner, "to")  # AttributeError when the inner patch has none
            return lambda *a, **k: FaceAttn2Patch(inner_to(*a, **k), self.job)
        return getattr(self.inner, attr)

    def has_face(self) -> bool:
        return any(is_faceid_adapter(a) for a in getattr(self.inner, "ipadapters", ()))

    def __call__(self, n, context_attn2, value_attn2, extra_options):
        job = self.job
        st = job.current_pass
        transform = None
        if job.active and isinstance(st, ForgePass) and self.has_face():
            try:
                part = unet_part(extra_options.get("block"))
                if part is not None:
                    groups = self._groups(n.shape[0], extra_options)
                    transform = transform_for(job.args, part, st.step, st.total, groups=groups)
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
    def _groups(rows: int, extra_options) -> torch.Tensor:
        """One id per row = the image index: rows are chunk-major [chunk 0 images, chunk 1 ...], so
        the softmask's min-max pools the branches of one image (closest to the authors' code)."""
        chunks = max(len(extra_options.get("cond_or_uncond") or [0]), 1)
        per_chunk = max(rows // chunks, 1)
        return torch.arange(rows) % per_chunk

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

    def _transformed(self, q, k, v, extra_options, transform):
        inner, job, st = self.inner, self.job, self.job.current_pass
        adapters = list(inner.ipadapters)
        face = [i for i, a in enumerate(adapters) if is_faceid_adapter(a)]
        for i in face:
            reason = self._supported(i, extra_options)
            if reason is not None:
                job.note(f"attention transform skipped: {reason} is not supported on Forge")
                return None
        # Text branch and the other adapters through Forge's own code: the patch without its
        # FaceID adapters (an empty adapter list gives the plain text attention).
        others = _copy_patch(inner)
        keep = [i for i in range(len(adapters)) if i not in face]
        for attr, value in list(vars(others).items()):
            if isinstance(value, list) and len(value) == len(adapters):
                setattr(others, attr, [value[i] for i in keep])
        out = others(q, k, v, extra_options)

        heads = int(extra_options["n_heads"])
        chunks = list(extra_options["cond_or_uncond"])
        rows, tokens, width = q.shape
        per_chunk = rows // len(chunks)
        head_dim = width // heads
        sigmas = extra_options.get("sigmas")
        sigma = float(sigmas[0]) if sigmas is not None else None
        transformed = False
        for i in face:
            start = float(_at(getattr(inner, "sigma_start", None), i, math.inf))
            end = float(_at(getattr(inner, "sigma_end", None), i, -math.inf))
            if sigma is not None and (sigma > start or sigma < end):  # outside the unit's start/end
                continue
            adapter = adapters[i]
            weight = float(_at(inner.weights, i, 1.0))
            linear = str(_at(getattr(inner, "weight_type", None), i, "original")).startswith("linear")
            to_k = adapter.ip_layers.to_kvs[inner.k_key]
            to_v = adapter.ip_layers.to_kvs[inner.v_key]
            cond, uncond = inner.conds[i], inner.unconds[i]
            k_by_chunk = (to_k(cond).repeat(per_chunk, 1, 1), to_k(uncond).repeat(per_chunk, 1, 1))
            v_by_chunk = (to_v(cond).repeat(per_chunk, 1, 1), to_v(uncond).repeat(per_chunk, 1, 1))
            ip_k = torch.cat([k_by_chunk[c] for c in chunks], dim=0)
            ip_v = torch.cat([v_by_chunk[c] for c in chunks], dim=0)
            if linear:
                ip_k, ip_v = ip_k * weight, ip_v * weight
            qh = q.view(rows, tokens, heads, head_dim).transpose(1, 2)
            kh = ip_k.to(q.dtype).view(rows, -1, heads, head_dim).transpose(1, 2)
            vh = ip_v.to(q.dtype).view(rows, -1, heads, head_dim).transpose(1, 2)
            if job.recording is None:
                face_out = ip_attention(qh, kh, vh, transform)
            else:   # "Show face attention": the same output, plus the maps
                face_out = preview.face_attention(qh, kh, vh, transform, kernels=None, recorder=preview.forge_recorder(
                    job, adapter, rows, extra_options, transform))
            face_out = face_out.transpose(1, 2).reshape(rows, tokens, width)
            if not linear:
                face_out = face_out * weight
            out = out + face_out.to(out.dtype)
            transformed = True
        if transformed:
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


def _make_pre_cfg(job: Job, st: ForgePass):
    def pre_cfg(*args):
        if len(args) == 1 and isinstance(args[0], dict):  # ComfyUI-style hook (after evaluation)
            return args[0].get("conds_out")
        model, cond, uncond_, x, timestep, model_options = args
        try:
            if job.active and job.current_pass is st:
                if uncond_ is not None and _uncond_droppable(job, st, model_options):
                    uncond_ = None
                if len(cond) > 1:
                    job.note("AND prompts: DCG uses Forge's weighted average of the sub-prompts as the full branch")
                model_options = {**model_options, RAN_KEY: uncond_ is not None}
        except Exception as exc:
            job.fail("Forge pre-CFG", exc)
        return model, cond, uncond_, x, timestep, model_options
    pre_cfg._fastface = True
    return pre_cfg


def _dcg(job: Job, st: ForgePass, args) -> torch.Tensor:
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
        if not st.face and uncond_ran:
            id_only = uncond      # no FaceID unit: negative text alone is the id-only branch
        elif negative is not None and st.calc is not None:
            # the negative conditioning in the *cond* slot: labelled COND, so the IP-Adapter
            # gives these rows the face embedding (the authors' ε(∅, c_id))
            id_only, _ = st.calc(model, negative, None, x, sigma, options)
        else:
            raise RuntimeError("the negative conditioning of this step is not available")
    else:
        id_only = full
    denoised = dcg_x0(x, sigma, uncond, id_only, full, alpha, beta, phi)
    if st.prior_cfg is not None:
        scale = float(args["cond_scale"])
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
        if job.active and job.current_pass is st:
            try:
                return _dcg(job, st, args)
            except Exception as exc:
                job.fail("Forge DCG", exc)
        return prior(args) if prior is not None else _stock_cfg(args)
    fastface_cfg._fastface = True
    fastface_cfg._fastface_prior = st.prior_cfg
    return fastface_cfg


def _without_ours(options, key: str) -> None:
    if isinstance(options.get(key), list):
        options[key] = [fn for fn in options[key] if not _ours(fn)]


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
                job.rows[(st.index, st.step)] += int(x.shape[0])

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
