"""AUTOMATIC1111 v1.10 host: DCG in the CFG denoiser, AM on sd-webui-controlnet's IP-Adapter.

Contracts relied on (A1111 v1.10.1 = 82a973c0, sd-webui-controlnet v1.1.455 = 56cec5b2; see
shared/docs/webui_api.md §2 and ipadapter_impls.md §3):

* `CFGDenoiser.forward` (modules/sd_samplers_cfg_denoiser.py L156-311) lays rows out as
  [cond rows (one per image without AND), uncond rows (B)], calls `on_cfg_denoiser` and reads back
  x / image_cond / sigma / text_cond / text_uncond, evaluates every row of x, then calls
  `self.combine_denoised(x_out, conds_list, uncond, cond_scale)`. k-diffusion and LCM denoisers
  return x₀; `CFGDenoiserTimesteps` (DDIM, PLMS, UniPC) returns ε and passes t as "sigma".
* The sampler calls `self.callback_state({'i': step, ...})` after the first model call of every
  sampler step (modules/sd_samplers_common.py L256, k_diffusion/sampling.py).
* sd-webui-controlnet prepends a marker token (+1024 cond, −1024 uncond) to every prompt row
  (scripts/hook.py `mark_prompt_context`); `PlugableIPAdapter.attn_eval` computes the face branch
  with fused SDPA and caches k/v per generation in `call_ip` (plugable_ipadapter.py L176, L200).

What FastFace does per sampling pass (only when enabled, all undone after the job):
* instance patches on this pass's sampler: `callback_state` (to know the sampler step) and
  `model_wrap_cfg.combine_denoised` (the DCG combination);
* in `on_cfg_denoiser` (registered once, a no-op for denoisers FastFace did not mark) the rows of
  the step are arranged for `branches_needed`: boosted steps add B id-only rows (negative text
  carrying the *positive* ControlNet mark, so the IP-Adapter applies the face) between the cond
  and uncond blocks; steps that need id-only but not uncond put the id-only text in the uncond
  slot instead (same row count as stock); other steps are left as they are;
* a class-level patch of `PlugableIPAdapter.attn_eval` that clears the k/v cache before every
  call (the batch composition changes between steps) and, for FaceID adapters in targeted parts,
  recomputes the face branch with `fastface.attention.ip_attention` and the step's transform;
  forward pre-hooks on every attn2 module tell it which UNet part is running.
"""
from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..attention import ip_attention
from ..blocks import unet_part
from ..guidance import dcg_eps, dcg_x0
from ..schedule import alpha_beta, branches_needed, rescale_phi
from . import preview
from .common import Job, PatchSet, StepTracker, guarded, log

name = "A1111"
POSITIVE_MARK_TOKEN = 1024.0  # sd-webui-controlnet scripts/hook.py
MARK_EPS = 1e-3


# -- per pass state ---------------------------------------------------------------------------
@dataclass
class PassState(StepTracker):
    """One sampling pass (txt2img, img2img or hires) of one job."""

    index: int = 0
    is_hires: bool = False
    face: bool = False               # a FaceID unit is active in sd-webui-controlnet
    eps_output: bool = False         # the denoiser returns ε (timestep samplers), else x₀
    images: int = 1                  # images per batch (rows of one branch), ≥ 1
    timestep_count: Optional[int] = None  # timestep samplers: len(timesteps) − 1 model steps
    # set per model call by on_cfg_denoiser, read by the combination
    layout: Optional[str] = None     # None (DCG not applied), "plain", "extra_id", "id_in_uncond"
    batch: int = 0
    alpha: float = 1.0
    beta: float = 1.0
    phi: float = 0.0
    uncond_skipped: bool = False
    uncond_marked: Optional[bool] = None   # sd-webui-controlnet marked the negative rows (read once)
    x: Optional[torch.Tensor] = None
    sigma: Optional[torch.Tensor] = None
    warned: set = field(default_factory=set)


def _sampler_step(st: PassState, den: Any) -> tuple[int, int]:
    """(step, total) for the model call that is about to run (see `StepTracker`)."""
    return st.on_model_call(st.timestep_count or getattr(den, "steps", None), getattr(den, "total_steps", None))


# -- ControlNet discovery ------------------------------------------------------------------------
def ip_adapters(p) -> list:
    """sd-webui-controlnet's live IP-Adapter models for this job (duck-typed)."""
    found = []
    for script in getattr(getattr(p, "scripts", None), "alwayson_scripts", []) or []:
        network = getattr(script, "latest_network", None)
        for param in getattr(network, "control_params", None) or []:
            model = getattr(param, "control_model", None)
            if model is not None and hasattr(model, "ipadapter") and hasattr(model, "attn_eval"):
                found.append(model)
    return found


def plugable_ipadapter_classes() -> list[type]:
    seen = []
    for module in list(sys.modules.values()):
        cls = getattr(module, "PlugableIPAdapter", None)
        if isinstance(cls, type) and hasattr(cls, "attn_eval") and cls not in seen:
            seen.append(cls)
    return seen


def is_faceid(adapter) -> bool:
    return bool(getattr(getattr(adapter, "ipadapter", None), "is_faceid", False))


# -- rows -----------------------------------------------------------------------------------------
def _crossattn(cond):
    return cond["crossattn"] if isinstance(cond, dict) else cond


def _is_marked(cond) -> bool:
    """sd-webui-controlnet's `prompt_context_is_marked`: token 0 is ±1024 on every row."""
    token0 = _crossattn(cond)[..., 0, :].float()
    return bool((token0.abs() - POSITIVE_MARK_TOKEN).abs().mean() < MARK_EPS)


def _with_positive_mark(cond):
    """A copy of (negative) rows whose ControlNet mark says 'cond', so IP-Adapter gives them the face."""
    if isinstance(cond, dict):
        out = type(cond)({k: v.clone() for k, v in cond.items()})
        out["crossattn"][:, 0, :] = POSITIVE_MARK_TOKEN
        return out
    out = cond.clone()
    out[:, 0, :] = POSITIVE_MARK_TOKEN
    return out


def _pad_tokens(cond, tokens: int, empty: Optional[torch.Tensor]):
    """Pad rows to `tokens` with empty-prompt chunks, like A1111's `pad_cond` (marker kept at 0)."""
    current = _crossattn(cond).shape[1]
    if current == tokens:
        return cond
    if empty is None or (tokens - current) % empty.shape[1] != 0:
        raise ValueError(f"cannot pad a {current}-token prompt to {tokens} tokens")
    crossattn = _crossattn(cond)
    repeats = (tokens - current) // empty.shape[1]
    padded = torch.cat([crossattn, empty.to(crossattn).repeat(crossattn.shape[0], repeats, 1)], dim=1)
    if isinstance(cond, dict):
        out = type(cond)(dict(cond))
        out["crossattn"] = padded
        return out
    return padded


def _cat(conds):
    if isinstance(conds[0], dict):
        return type(conds[0])({k: torch.cat([c[k] for c in conds]) for k in conds[0]})
    return torch.cat(conds)


def _uncond_will_be_skipped(den, sigma: torch.Tensor) -> bool:
    """A1111's own skip test (sd_samplers_cfg_denoiser.py L219-227): NGMS / skip early CFG."""
    from modules import shared  # noqa: WPS433 (host import, only inside the WebUI)

    opts = shared.opts
    skip_early = getattr(opts, "skip_early_cond", 0.0) or 0.0
    if skip_early != 0 and den.step / max(den.total_steps or 1, 1) <= skip_early:
        return True
    s_min = getattr(den.sampler, "s_min_uncond", 0.0) or 0.0
    return bool((den.step % 2 or getattr(opts, "s_min_uncond_all", False)) and s_min > 0 and sigma[0] < s_min)


def _empty_prompt():
    from modules import shared

    return getattr(shared.sd_model, "cond_stage_model_empty_prompt", None)


@guarded("A1111 on_cfg_denoiser")
def _arrange_rows(job: Job, st: PassState, params) -> None:
    den = params.denoiser
    step, total = _sampler_step(st, den)
    args = job.args
    st.layout = None
    uncond_rows = _crossattn(params.text_uncond).shape[0]
    if not args.dcg:
        return
    if params.x.shape[0] != 2 * uncond_rows:
        if "and" not in st.warned:
            st.warned.add("and")
            job.note("DCG skipped: AND prompts / edit models are not supported (attention transform still on)")
        return
    need = branches_needed(step, total, args)
    st.alpha, st.beta = alpha_beta(step, total, args)
    st.phi = rescale_phi(step, total, args)
    st.batch = uncond_rows
    st.uncond_skipped = _uncond_will_be_skipped(den, params.sigma)
    if st.uncond_skipped and "skip" not in st.warned:
        st.warned.add("skip")
        job.note("A1111 skipped the negative prompt on some steps (NGMS / skip early CFG): DCG used α = 1 there")
    if st.uncond_marked is None:   # ControlNet marks every row or none: read once per pass
        st.uncond_marked = _is_marked(params.text_uncond)
    face = st.face and st.uncond_marked
    b = uncond_rows
    st.x, st.sigma = params.x[:b].clone(), params.sigma[:b].clone()
    if face and need.id_only and (need.uncond or st.uncond_skipped):
        id_rows = _with_positive_mark(params.text_uncond)
        tokens = max(_crossattn(params.text_cond).shape[1], _crossattn(id_rows).shape[1])
        empty = _empty_prompt()
        # build everything first, then assign: an error must leave A1111's rows consistent
        text_cond = _cat([_pad_tokens(params.text_cond, tokens, empty), _pad_tokens(id_rows, tokens, empty)])
        x, sigma, image_cond = (torch.cat([t[:b], t[:b], t[b:]]) for t in (params.x, params.sigma, params.image_cond))
        params.text_cond, params.x, params.sigma, params.image_cond = text_cond, x, sigma, image_cond
        st.layout = "extra_id"
    elif face and need.id_only:
        params.text_uncond = _with_positive_mark(params.text_uncond)
        st.layout = "id_in_uncond"
    else:
        st.layout = "plain"   # ε_id is ε_uncond without a face, or not read at this step


def _combine(job: Job, st: PassState, original, x_out, conds_list, uncond, cond_scale):
    """The DCG combination in place of A1111's `combine_denoised` for this pass."""
    if st.layout is None or not job.active:
        return original(x_out, conds_list, uncond, cond_scale)
    try:
        b = st.batch
        full = torch.cat([x_out[conds[0][0]: conds[0][0] + 1] for conds in conds_list])
        if st.layout == "extra_id":
            id_only = x_out[b: 2 * b]
        elif st.layout == "id_in_uncond":
            id_only = x_out[-b:]
        else:
            id_only = x_out[-b:]   # no face: negative text alone is the id-only branch
        uncond_out = x_out[-b:]
        alpha, beta = st.alpha, st.beta
        if st.uncond_skipped or st.layout == "id_in_uncond":
            alpha = 1.0            # no real uncond rows this step (α = 1 needs none)
        if st.eps_output:
            return dcg_eps(uncond_out, id_only, full, alpha, beta, st.phi)
        return dcg_x0(st.x, st.sigma, uncond_out, id_only, full, alpha, beta, st.phi)
    except Exception as exc:  # never fail the generation: stock CFG for the rest of the job
        job.fail("A1111 DCG combination", exc)
        st.layout = None
        return original(x_out, conds_list, uncond, cond_scale)


def on_cfg_denoiser(params) -> None:
    """Registered once at import; acts only on denoisers FastFace marked for the current job."""
    marked = getattr(params.denoiser, "_fastface_pass", None)
    if marked is None:
        return
    job, st = marked
    if job.active:
        _arrange_rows(job, st, params)
        preview.a1111_rows(job, st, params)


# -- attention ------------------------------------------------------------------------------------
def _patched_attn_eval(job: Job, original, transform_layers: bool):
    """`PlugableIPAdapter.attn_eval` for this job: no k/v cache; FaceID face branch transformed
    (when `transform_layers`), every other adapter and layer through the original code."""
    def attn_eval(self, hidden_states, query, cond_uncond_image_emb, attn_heads, head_dim, emb_to_k, emb_to_v):
        if isinstance(getattr(self, "cache", None), dict):
            self.cache.clear()  # k/v per call: FastFace changes the rows between steps
        st, part = job.current_pass, job.layer_part
        transform = None
        if transform_layers and job.active and st is not None and part and is_faceid(self) \
                and not getattr(self.ipadapter, "is_pulid", False):
            try:
                # rows are block-major [cond images, (id images,) uncond images]: row % images is
                # the image, so the softmask pools the branches of one image, as Forge does (an
                # int period: a reshape inside, no tensor made per call)
                images = st.images if hidden_states.shape[0] % st.images == 0 else None
                transform = job.transforms.get(part, st.step, st.total, images)
            except Exception as exc:
                job.fail("A1111 attention transform", exc)
        if transform is None:
            if job.recording is not None and is_faceid(self):   # "Show face attention" only
                preview.a1111_record_untransformed(job, self, query, cond_uncond_image_emb, attn_heads, head_dim, emb_to_k)
            return original(self, hidden_states, query, cond_uncond_image_emb, attn_heads, head_dim, emb_to_k, emb_to_v)
        try:
            batch = hidden_states.shape[0]
            ip_k, ip_v = emb_to_k(cond_uncond_image_emb), emb_to_v(cond_uncond_image_emb)
            ip_k, ip_v = (t.view(batch, -1, attn_heads, head_dim).transpose(1, 2).to(query.dtype) for t in (ip_k, ip_v))
            if job.recording is None:
                out = ip_attention(query, ip_k, ip_v, transform, kernels=job.kernels)   # (B, heads, L, d)
            else:   # "Show face attention": the same output, plus the maps
                out = preview.face_attention(query, ip_k, ip_v, transform, kernels=job.kernels,
                                             recorder=preview.a1111_recorder(job, self, batch, transform))
            job.am_calls[(st.index, st.step, job.layer_part)] += 1
            return out.transpose(1, 2).reshape(batch, -1, attn_heads * head_dim)
        except Exception as exc:
            job.fail("A1111 face attention", exc)
            return original(self, hidden_states, query, cond_uncond_image_emb, attn_heads, head_dim, emb_to_k, emb_to_v)
    return attn_eval


def _install_attention(job: Job, p, patches: PatchSet, transform_layers: bool) -> None:
    classes = plugable_ipadapter_classes()
    if not classes:
        job.note("sd-webui-controlnet's IP-Adapter code was not found: no attention transform")
        return
    for cls in classes:
        original = cls.__dict__.get("attn_eval", cls.attn_eval)
        patches.setattr(cls, "attn_eval", _patched_attn_eval(job, original, transform_layers))
    if not transform_layers and job.recording is None:   # the preview needs the parts too
        return
    unet = p.sd_model.model.diffusion_model
    for module_name, module in unet.named_modules():
        if module_name.endswith("attn2"):
            part = unet_part(module_name)
            handle = module.register_forward_pre_hook(lambda _m, _a, part=part: setattr(job, "layer_part", part))
            patches.on_undo(handle.remove)


def _install_row_counter(job: Job, p, patches: PatchSet) -> None:
    unet = p.sd_model.model.diffusion_model

    def count(_module, inputs):
        st = job.current_pass
        if st is not None and inputs and hasattr(inputs[0], "shape"):
            job.count_unet_call(st.index, st.step, int(inputs[0].shape[0]))   # shape: Python ints

    patches.on_undo(unet.register_forward_pre_hook(count).remove)


# -- entry points called by the script ---------------------------------------------------------
def start_pass(job: Job, p) -> None:
    """process_before_every_sampling: patch this pass's sampler (the sampler exists already)."""
    is_hires = bool(getattr(p, "is_hr_pass", False))
    job.current_pass = None
    if is_hires and not job.args.hires:
        job.note("hires pass left to the WebUI (FastFace's hires option is off)")
        return
    sampler = getattr(p, "sampler", None)
    den = getattr(sampler, "model_wrap_cfg", None)
    if den is None or not hasattr(den, "combine_denoised") or not hasattr(sampler, "callback_state"):
        job.note("this sampler has no CFG denoiser FastFace knows: FastFace is off for this pass")
        return
    patches = job.patches
    adapters = ip_adapters(p)
    face = any(is_faceid(a) for a in adapters)
    if not face and job.passes == 0:
        job.note("no FaceID unit in sd-webui-controlnet: DCG without the face branch, no attention transform")
    st = PassState(index=job.passes, is_hires=is_hires, face=face, images=max(int(getattr(p, "batch_size", 1) or 1), 1),
                   eps_output=type(den).__name__ == "CFGDenoiserTimesteps" or hasattr(den, "alphas"))
    job.passes += 1
    job.current_pass = st
    job.layer_part = None

    original_callback = sampler.callback_state

    def callback_state(d):
        st.on_callback(d.get("i", 0))
        return original_callback(d)

    patches.setattr(sampler, "callback_state", callback_state)
    if st.eps_output and callable(getattr(sampler, "func", None)):
        # A1111's DDIM / PLMS / UniPC loop over len(timesteps) − 1 steps, one fewer than the
        # denoiser's `steps` (sd_samplers_timesteps_impl.py); read the real count from the call.
        original_func = sampler.func

        @functools.wraps(original_func)  # sample() inspects the signature for `timesteps`
        def func(*a, **kw):
            timesteps = kw.get("timesteps")
            if timesteps is not None:
                st.timestep_count = max(len(timesteps) - 1, 1)
            return original_func(*a, **kw)

        patches.setattr(sampler, "func", func)
    patches.setattr(den, "_fastface_pass", (job, st))
    if job.args.dcg:
        original_combine = den.combine_denoised
        patches.setattr(den, "combine_denoised",
                        lambda x_out, conds_list, uncond, cond_scale: _combine(job, st, original_combine, x_out, conds_list, uncond, cond_scale))
    # Once per job: the class patch (also needed by DCG alone, whose row count changes between
    # steps and would break ControlNet's k/v cache) and the hooks.
    if "attention" not in job.installed and adapters:
        job.installed.add("attention")
        _install_attention(job, p, patches, transform_layers=face and job.args.am_mode != "off")
    if "rows" not in job.installed:
        job.installed.add("rows")
        _install_row_counter(job, p, patches)


def end_job(job: Job, p) -> None:
    job.current_pass = None
    if job.patches is not None:
        job.patches.undo()
