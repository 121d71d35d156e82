""""Show face attention": the host side of recording face-attention maps and adding the previews.

Only active when the job's `show_attention` is on (`job.recording` is a `Recording`); otherwise
every entry point returns at once and nothing is installed, so recording off costs nothing.

What the hosts call (small call sites, so the host modules stay readable):
* `begin(job)` in the script's `process`;
* `start_pass(job, p)` after the host patched a sampling pass: the batch's first image index, and
  A1111: a UNet forward pre-hook that tracks which rows of the denoiser batch a call holds;
  Forge: a wrapper around the pass's id-only evaluation so those rows are not recorded;
* A1111: `a1111_rows(job, st, params)` in `on_cfg_denoiser` (after FastFace arranged the rows),
  `a1111_recorder(...)` for `ip_attention(..., recorder=...)` in the patched `attn_eval`, and
  `record_maps(...)` where the layer is left to ControlNet's own (fused) code;
* Forge: `forge_recorder(...)` in `FaceAttn2Patch._transformed`, `forge_record_untransformed(...)`
  where the patch hands the call to Forge's own code;
* `finish(job, p, processed)` in the script's `postprocess`: one preview per generated image,
  appended the way ControlNet adds its detected maps — A1111: `processed.images` (after the
  generated images, so not saved, not in the grid, no infotext of their own); Forge:
  `processed.extra_images` (Forge's list for exactly this, which its UI and API append).

Recorded rows: the *full* branch (prompt + face) of every image, i.e. what the image is made of.
A1111 lays a denoiser call out block-major [cond images, (id-only images,) uncond images], and may
split it into several UNet calls (different prompt lengths, `batch_cond_uncond` off), so the
pre-hook keeps the row offset of each call; rows [0, images) of the denoiser batch are the full
branch (not with AND prompts: then nothing is recorded, logged once). Forge labels chunks
(`cond_or_uncond`): the COND chunk of the sampler's own evaluation is the full branch; FastFace's
id-only evaluation is also labelled COND and is skipped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..attention import ip_attention
from ..attnmaps import AttentionRecorder, token_layout
from ..blocks import unet_part
from .common import Job, log

PASS_NAMES = {0: "base pass", 1: "hires pass"}


@dataclass
class Recording:
    """Per job: the recorder plus the host's row bookkeeping."""

    recorder: AttentionRecorder = field(default_factory=AttentionRecorder)
    adapter: Any = None              # id() of the one FaceID adapter recorded (the first one seen)
    plus: bool = False
    v2: Optional[bool] = None
    first_image: int = 0             # job-wide index of this batch's first image
    images: int = 1                  # images per batch
    # A1111: rows of the denoiser call now running
    full_rows: int = 0               # denoiser rows [0, full_rows) are the full branch, one per image
    offset: int = 0                  # denoiser rows handed to UNet calls so far
    call_offset: int = 0             # denoiser row of this UNet call's row 0
    latent_hw: tuple = (0, 0)
    # Forge
    in_id_branch: bool = False       # inside FastFace's id-only evaluation
    warned: set = field(default_factory=set)


def begin(job: Job) -> None:
    job.recording = Recording() if getattr(job.args, "show_attention", False) else None
    if job.recording is not None:
        for index, name in PASS_NAMES.items():
            job.recording.recorder.name_pass(index, name)


def _pass_index(st) -> int:
    return 1 if getattr(st, "is_hires", False) else 0


def start_pass(job: Job, p) -> None:
    """After the host's start_pass: batch position, and the host's row bookkeeping."""
    try:
        _start_pass(job, p)
    except Exception as exc:
        give_up(job, exc)


def _start_pass(job: Job, p) -> None:
    rec = getattr(job, "recording", None)
    st = job.current_pass
    if rec is None or st is None:
        return
    rec.images = max(int(getattr(p, "batch_size", 1) or 1), 1)
    rec.first_image = int(getattr(p, "iteration", 0) or 0) * rec.images
    if job.host == "A1111" and "preview rows" not in job.installed:
        unet = p.sd_model.model.diffusion_model

        def track_rows(_module, inputs):
            x = inputs[0] if inputs else None
            if hasattr(x, "shape") and x.dim() == 4:
                rec.call_offset = rec.offset
                rec.offset += x.shape[0]
                rec.latent_hw = (x.shape[-2], x.shape[-1])

        job.installed.add("preview rows")
        job.patches.on_undo(unet.register_forward_pre_hook(track_rows).remove)
    calc = getattr(st, "calc", None)
    if job.host == "Forge" and callable(calc):
        def calc_id_branch(*args, **kwargs):   # FastFace's id-only evaluation (see forge._dcg)
            rec.in_id_branch = True
            try:
                return calc(*args, **kwargs)
            finally:
                rec.in_id_branch = False
        st.calc = calc_id_branch


def _adapter_ok(rec: Recording, adapter, plus: bool, v2: Optional[bool]) -> bool:
    """Record one FaceID adapter per job (the first seen); remember what kind it is."""
    if rec.adapter is None:
        rec.adapter, rec.plus, rec.v2 = id(adapter), plus, v2
    return rec.adapter == id(adapter)


# -- A1111 -------------------------------------------------------------------------------------------
def a1111_rows(job: Job, st, params) -> None:
    """on_cfg_denoiser, after FastFace's row arrangement: a new denoiser call starts at row 0."""
    try:
        _a1111_rows(job, st, params)
    except Exception as exc:
        give_up(job, exc)


def _a1111_rows(job: Job, st, params) -> None:
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


def a1111_recorder(job: Job, adapter, rows: int, transform=None):
    """The `recorder=` for this attn_eval call of `adapter` (rows in the call), or None."""
    try:
        return _a1111_recorder(job, adapter, rows, transform)
    except Exception as exc:
        give_up(job, exc)
        return None


def _a1111_recorder(job: Job, adapter, rows: int, transform=None):
    rec = getattr(job, "recording", None)
    st, part = job.current_pass, job.layer_part
    if rec is None or st is None or part is None or not job.active:
        return None
    model = getattr(adapter, "ipadapter", None)
    if not _adapter_ok(rec, adapter, bool(getattr(model, "is_plus", False)), getattr(model, "is_v2", None)):
        return None
    start = max(0, -rec.call_offset)
    stop = min(rows, rec.full_rows - rec.call_offset)
    if stop <= start:
        return None
    return rec.recorder.for_call(pass_index=_pass_index(st), step=st.step, part=part, latent_hw=rec.latent_hw,
                                 rows=slice(start, stop), first_image=rec.first_image + rec.call_offset + start,
                                 transform=transform)


def a1111_record_untransformed(job: Job, adapter, query, emb, heads: int, head_dim: int, emb_to_k) -> None:
    """A FaceID attn_eval call left to ControlNet's own code: record its untransformed map. The
    keys come from ControlNet's own `emb_to_k` (cached by it for the call that follows)."""
    try:
        recorder = _a1111_recorder(job, adapter, query.shape[0], None)
        if recorder is not None:
            ip_k = emb_to_k(emb).view(query.shape[0], -1, heads, head_dim).transpose(1, 2)
            record_maps(recorder, query, ip_k)
    except Exception as exc:
        give_up(job, exc)


def give_up(job: Job, exc: BaseException) -> None:
    """A recording error stops the recording for the job (one log line); the images are untouched."""
    if getattr(job, "recording", None) is not None:
        log.error("Show face attention: recording stopped (%s: %s)", type(exc).__name__, exc)
        job.recording = None


def face_attention(q, k, v, transform, *, kernels=None, recorder=None):
    """`ip_attention` while recording, with exactly the output the job gets without recording.

    Normally the maps come from the call itself (`recorder=`: the torch path, which is also the
    path without recording). Where the fused kernels would run (kernels enabled and
    `fused_face.available`: CUDA with Triton), the recorder would force the torch path and change
    the output by rounding; there the output comes from the kernels as without recording and the
    maps are computed beside it."""
    if recorder is not None and kernels is not None and kernels.enabled and _kernels_run(q):
        out = ip_attention(q, k, v, transform, kernels=kernels)
        record_maps(recorder, q, k, transform)
        return out
    return ip_attention(q, k, v, transform, recorder=recorder, kernels=kernels)


def _kernels_run(q) -> bool:
    try:
        from ..fused_face import available
    except Exception:  # the kernel module is optional
        return False
    return bool(available(q.device))


def record_maps(recorder, query: torch.Tensor, ip_k: torch.Tensor, transform=None) -> None:
    """Where the face branch's map is not materialised (the host's own fused code, or FastFace's
    fused kernels): the map from the same q and k (and the transform, if any), for the preview
    only; the output is not touched."""
    if recorder is None:
        return
    with torch.no_grad():
        scores = torch.matmul(query.float(), ip_k.float().transpose(-1, -2)) * (query.shape[-1] ** -0.5)
        attn = scores.softmax(dim=-1)
        recorder(attn, None if transform is None else transform(attn))


# -- Forge -------------------------------------------------------------------------------------------
def forge_recorder(job: Job, adapter, rows: int, extra_options, transform=None):
    """The `recorder=` for one FaceID adapter in a Forge attn2 call, or None."""
    try:
        return _forge_recorder(job, adapter, rows, extra_options, transform)
    except Exception as exc:
        give_up(job, exc)
        return None


def _forge_recorder(job: Job, adapter, rows: int, extra_options, transform=None):
    rec = getattr(job, "recording", None)
    st = job.current_pass
    if rec is None or st is None or rec.in_id_branch or not job.active:
        return None
    part = unet_part(extra_options.get("block"))
    # FastFace's DCG may carry the id-only rows in Forge's own call, labelled COND for the
    # IP-Adapter; `fastface_chunks` (forge.CHUNKS_KEY) then says which chunk really is which
    chunks = list(extra_options.get("fastface_chunks") or extra_options.get("cond_or_uncond") or [])
    shape = extra_options.get("original_shape")
    if part is None or 0 not in chunks or not shape or len(shape) < 4:
        return None
    if not _adapter_ok(rec, adapter, bool(getattr(adapter, "is_plus", False)), getattr(adapter, "is_v2", None)):
        return None
    per_chunk = rows // len(chunks)
    start = chunks.index(0) * per_chunk
    return rec.recorder.for_call(pass_index=_pass_index(st), step=st.step, part=part,
                                 latent_hw=(int(shape[2]), int(shape[3])), rows=slice(start, start + per_chunk),
                                 first_image=rec.first_image, transform=transform)


def forge_record_untransformed(patch, q: torch.Tensor, extra_options) -> None:
    """A Forge attn2 call FastFace leaves to Forge's own code: record the first FaceID adapter's
    untransformed map from the same q and its face keys (built as `FaceAttn2Patch._transformed`
    builds them: per chunk cond / uncond embedding, K scaled by the weight for 'linear')."""
    try:
        _forge_record_untransformed(patch, q, extra_options)
    except Exception as exc:
        give_up(patch.job, exc)


def _forge_record_untransformed(patch, q: torch.Tensor, extra_options) -> None:
    job = patch.job
    rec = getattr(job, "recording", None)
    if rec is None or rec.in_id_branch or not job.active or job.current_pass is None:
        return
    inner = patch.inner
    adapters = list(getattr(inner, "ipadapters", ()))
    from .forge import _at, is_faceid_adapter   # the host module owns these duck-typing rules
    face = [i for i, a in enumerate(adapters) if is_faceid_adapter(a)]
    if not face:
        return
    i = face[0]
    sigmas = extra_options.get("sigmas")
    if sigmas is not None and not (float(_at(getattr(inner, "sigma_end", None), i, -float("inf")))
                                   <= float(sigmas[0])
                                   <= float(_at(getattr(inner, "sigma_start", None), i, float("inf")))):
        return   # outside the unit's start/end: Forge does not apply the face at all
    rows, tokens, width = q.shape
    chunks = list(extra_options.get("cond_or_uncond") or [])   # what the IP-Adapter sees (its k per chunk)
    recorder = _forge_recorder(job, adapters[i], rows, extra_options, None)
    if recorder is None:
        return
    heads = int(extra_options["n_heads"])
    head_dim = width // heads
    per_chunk = rows // len(chunks)
    to_k = adapters[i].ip_layers.to_kvs[inner.k_key]
    with torch.no_grad():
        cond, uncond = inner.conds[i], inner.unconds[i]
        by_chunk = (to_k(cond).repeat(per_chunk, 1, 1), to_k(uncond).repeat(per_chunk, 1, 1))
        ip_k = torch.cat([by_chunk[c] for c in chunks], dim=0)
        if str(_at(getattr(inner, "weight_type", None), i, "original")).startswith("linear"):
            ip_k = ip_k * float(_at(inner.weights, i, 1.0))
        qh = q.view(rows, tokens, heads, head_dim).transpose(1, 2)
        kh = ip_k.to(q.dtype).view(rows, -1, heads, head_dim).transpose(1, 2)
        record_maps(recorder, qh, kh)


# -- after the job ------------------------------------------------------------------------------------
def finish(job: Job, p, processed) -> int:
    """Render one preview per generated image and append it as an extra image; returns how many.
    Never raises (a failed preview is logged, the generation is untouched)."""
    rec = getattr(job, "recording", None)
    if rec is None or processed is None:
        return 0
    try:
        return _finish(rec, processed)
    except Exception as exc:  # never fail the generation for a preview
        log.error("Show face attention: no preview (%s: %s)", type(exc).__name__, exc)
        return 0
    finally:
        job.recording = None   # free the maps


def _finish(rec: Recording, processed) -> int:
    from ..attnpreview import render_grid  # PIL: imported only when previews are drawn

    maps = rec.recorder.images()
    if not maps:
        log.info("Show face attention: no FaceID face attention was recorded (no FaceID unit?)")
        return 0
    images = list(getattr(processed, "images", None) or [])
    first = int(getattr(processed, "index_of_first_image", 0) or 0)
    infotexts = getattr(processed, "infotexts", None)
    generated = images[first: len(infotexts)] if infotexts else images[first:]
    extra = getattr(processed, "extra_images", None)
    target = extra if isinstance(extra, list) else processed.images
    tokens = maps[0].tokens
    layout = token_layout(tokens, plus=rec.plus, v2=rec.v2, portrait=not rec.plus and tokens % 16 == 0)
    added = 0
    for image_maps in maps:
        if image_maps.image < len(generated):
            target.append(render_grid(generated[image_maps.image], image_maps, layout))
            added += 1
    if rec.recorder.skipped:
        log.info("Show face attention: %d layer call(s) of an unexpected shape were not shown", rec.recorder.skipped)
    return added
