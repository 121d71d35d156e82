""""Show face attention" on A1111: which rows of a UNet call are the images' full branch, the
recorder of an `attn_eval` call, and the map of a call left to ControlNet's own code. The rest is
`hosts.recording`.

A1111 lays a denoiser call out block-major [cond images, (id-only images,) uncond images], and may
split it into several UNet calls (different prompt lengths, `batch_cond_uncond` off), so a UNet
forward pre-hook keeps the row offset of each call; rows [0, images) of the denoiser batch are the
full branch (not with AND prompts: then nothing is recorded, logged once).
"""
from __future__ import annotations

from .. import recording
from ..common import Job, log
from .controlnet import adapter_kind


def start_recording_pass(job: Job, p) -> None:
    """After `passes.start_pass`: the batch position, and (once per job) the row tracker."""
    recording.start_pass(job, p, _track_rows)


def _track_rows(job: Job, rec: recording.Recording, st, p) -> None:
    if "preview rows" in job.installed:
        return
    unet = p.sd_model.model.diffusion_model

    def track_rows(_module, inputs):
        x = inputs[0] if inputs else None
        if hasattr(x, "shape") and x.dim() == 4:
            rec.call_offset = rec.offset
            rec.offset += x.shape[0]
            rec.latent_hw = (x.shape[-2], x.shape[-1])

    job.installed.add("preview rows")
    job.patches.on_undo(unet.register_forward_pre_hook(track_rows).remove)


def on_rows_arranged(job: Job, st, params) -> None:
    """on_cfg_denoiser, after FastFace's row arrangement: a new denoiser call starts at row 0."""
    try:
        _rows_arranged(job, st, params)
    except Exception as exc:
        recording.give_up(job, exc)


def _rows_arranged(job: Job, st, params) -> None:
    rec = getattr(job, "recording", None)
    if rec is None:
        return
    rec.offset = rec.call_offset = 0
    images = params.text_uncond["crossattn"].shape[0] if isinstance(params.text_uncond, dict) \
        else params.text_uncond.shape[0]
    extra = images if getattr(st, "layout", None) == "extra_id" else 0
    cond_rows = params.x.shape[0] - images - extra
    rec.full_rows = images if cond_rows == images else 0
    if not rec.full_rows and "and" not in rec.warned:
        rec.warned.add("and")
        log.info("Show face attention: AND prompts are not recorded")


def recorder(job: Job, adapter, rows: int, transform=None):
    """The `recorder=` for this attn_eval call of `adapter` (rows in the call), or None."""
    try:
        return _recorder(job, adapter, rows, transform)
    except Exception as exc:
        recording.give_up(job, exc)
        return None


def _recorder(job: Job, adapter, rows: int, transform=None):
    rec = getattr(job, "recording", None)
    st, part = job.current_pass, job.layer_part
    if rec is None or st is None or part is None or not job.active:
        return None
    model = getattr(adapter, "ipadapter", None)
    kind = adapter_kind(adapter)
    if kind is None or not recording.adapter_ok(rec, adapter, bool(getattr(model, "is_plus", False)),
                                                getattr(model, "is_v2", None), kind=kind.name):
        return None
    start = max(0, -rec.call_offset)
    stop = min(rows, rec.full_rows - rec.call_offset)
    if stop <= start:
        return None
    return rec.recorder.for_call(pass_index=recording.pass_index(st), step=st.step, part=part, latent_hw=rec.latent_hw,
                                 rows=slice(start, stop), first_image=rec.first_image + rec.call_offset + start,
                                 transform=transform)


def record_untransformed(job: Job, adapter, query, emb, heads: int, head_dim: int, emb_to_k) -> None:
    """A plain-SDPA (FaceID-like) attn_eval call left to ControlNet's own code: record its untransformed map. The
    keys come from ControlNet's own `emb_to_k` (cached by it for the call that follows)."""
    try:
        recorder = _recorder(job, adapter, query.shape[0], None)
        if recorder is not None:
            ip_k = emb_to_k(emb).view(query.shape[0], -1, heads, head_dim).transpose(1, 2)
            recording.record_maps(recorder, query, ip_k)
    except Exception as exc:
        recording.give_up(job, exc)

