"""A1111 DCG: the rows of each step arranged in `on_cfg_denoiser` (id-only rows added, or put in the
uncond slot), and the combination in place of the denoiser's `combine_denoised`."""
from __future__ import annotations

from typing import Optional

import torch

from ...method.guidance import dcg_eps, dcg_x0
from ...method.schedule import alpha_beta, branches_needed, rescale_phi
from ..common import CFG_PP_NOTE, IN_DCG, IN_EXTRA_ROWS, Job, guarded
from . import preview
from .controlnet import crossattn, is_marked, with_positive_mark
from .state import PassState, sampler_step


def _pad_tokens(cond, tokens: int, empty: Optional[torch.Tensor]):
    """Pad rows to `tokens` with empty-prompt chunks, like A1111's `pad_cond` (marker kept at 0)."""
    current = crossattn(cond).shape[1]
    if current == tokens:
        return cond
    if empty is None or (tokens - current) % empty.shape[1] != 0:
        raise ValueError(f"cannot pad a {current}-token prompt to {tokens} tokens")
    context = crossattn(cond)
    repeats = (tokens - current) // empty.shape[1]
    padded = torch.cat([context, empty.to(context).repeat(context.shape[0], repeats, 1)], dim=1)
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


@guarded("A1111 on_cfg_denoiser", place=IN_EXTRA_ROWS)   # building the extra rows may run out
def _arrange_rows(job: Job, st: PassState, params) -> None:
    den = params.denoiser
    step, total = sampler_step(st, den)
    args = job.args
    st.layout = None
    uncond_rows = crossattn(params.text_uncond).shape[0]
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
        st.uncond_marked = is_marked(params.text_uncond)
    face = st.face and st.uncond_marked
    b = uncond_rows
    st.x, st.sigma = params.x[:b].clone(), params.sigma[:b].clone()
    # DDIM CFG++ renoises with the uncond rows' output (sd_samplers_cfg_denoiser.py L281-282,
    # sd_samplers_timesteps_impl.py ddim_cfgpp L56-73): they stay the real uncond on every step
    cfg_pp = bool(getattr(den, "need_last_noise_uncond", False))
    if cfg_pp:
        job.note(CFG_PP_NOTE)
    if face and need.id_only and (need.uncond or st.uncond_skipped or cfg_pp):
        id_rows = with_positive_mark(params.text_uncond)
        tokens = max(crossattn(params.text_cond).shape[1], crossattn(id_rows).shape[1])
        empty = _empty_prompt()
        # build everything first, then assign: an error must leave A1111's rows consistent
        text_cond = _cat([_pad_tokens(params.text_cond, tokens, empty), _pad_tokens(id_rows, tokens, empty)])
        x, sigma, image_cond = (torch.cat([t[:b], t[:b], t[b:]]) for t in (params.x, params.sigma, params.image_cond))
        params.text_cond, params.x, params.sigma, params.image_cond = text_cond, x, sigma, image_cond
        st.layout = "extra_id"
    elif face and need.id_only:
        params.text_uncond = with_positive_mark(params.text_uncond)
        st.layout = "id_in_uncond"
    else:
        st.layout = "plain"   # ε_id is ε_uncond without a face, or not read at this step


def combine(job: Job, st: PassState, original, x_out, conds_list, uncond, cond_scale):
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
        job.fail_in_call("A1111 DCG combination", exc, IN_DCG)
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
        preview.on_rows_arranged(job, st, params)

