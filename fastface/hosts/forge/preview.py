""""Show face attention" on Forge: the recorder of an identity adapter's attn2 call, the map of a call
left to Forge's own code, and the pass's id-only evaluation kept out of the recording. The rest is
`hosts.recording`.

Forge labels chunks (`cond_or_uncond`): the COND chunk of the sampler's own evaluation is the full
branch; FastFace's id-only evaluation (a separate call) is also labelled COND and is skipped, and
where DCG carries the id-only rows in Forge's own call, `fastface_chunks` (`batching.CHUNKS_KEY`)
says which chunk really is which.
"""
from __future__ import annotations

import torch

from ...method.blocks import unet_part
from .. import recording
from ..common import Job
from .internals import adapter_kind, at


def start_recording_pass(job: Job, p) -> None:
    """After `passes.start_pass`: the batch position, and the id-only evaluation marked."""
    recording.start_pass(job, p, _mark_id_branch)


def _mark_id_branch(job: Job, rec: recording.Recording, st, p) -> None:
    calc = getattr(st, "calc", None)
    if callable(calc):
        def calc_id_branch(*args, **kwargs):   # FastFace's id-only evaluation (see dcg._dcg)
            rec.in_id_branch = True
            try:
                return calc(*args, **kwargs)
            finally:
                rec.in_id_branch = False
        st.calc = calc_id_branch


def recorder(job: Job, adapter, rows: int, extra_options, transform=None):
    """The `recorder=` for one identity adapter in a Forge attn2 call, or None."""
    try:
        return _recorder(job, adapter, rows, extra_options, transform)
    except Exception as exc:
        recording.give_up(job, exc)
        return None


def _recorder(job: Job, adapter, rows: int, extra_options, transform=None):
    rec = getattr(job, "recording", None)
    st = job.current_pass
    if rec is None or st is None or rec.in_id_branch or not job.active:
        return None
    part = unet_part(extra_options.get("block"))
    # FastFace's DCG may carry the id-only rows in Forge's own call, labelled COND for the
    # IP-Adapter; `fastface_chunks` (batching.CHUNKS_KEY) then says which chunk really is which
    chunks = list(extra_options.get("fastface_chunks") or extra_options.get("cond_or_uncond") or [])
    shape = extra_options.get("original_shape")
    if part is None or 0 not in chunks or not shape or len(shape) < 4:
        return None
    kind = adapter_kind(adapter)
    if kind is None or not recording.adapter_ok(rec, adapter, bool(getattr(adapter, "is_plus", False)),
                                                getattr(adapter, "is_v2", None), kind=kind.name):
        return None
    per_chunk = rows // len(chunks)
    start = chunks.index(0) * per_chunk
    return rec.recorder.for_call(pass_index=recording.pass_index(st), step=st.step, part=part,
                                 latent_hw=(int(shape[2]), int(shape[3])), rows=slice(start, start + per_chunk),
                                 first_image=rec.first_image, transform=transform)


def record_untransformed(patch, q: torch.Tensor, extra_options) -> None:
    """A Forge attn2 call FastFace leaves to Forge's own code: record the first identity adapter's
    untransformed map from the same q and its face keys (built as `FaceAttn2Patch._transformed`
    builds them: per chunk cond / uncond embedding, K scaled by the weight for 'linear')."""
    try:
        _record_untransformed(patch, q, extra_options)
    except Exception as exc:
        recording.give_up(patch.job, exc)


def _record_untransformed(patch, q: torch.Tensor, extra_options) -> None:
    job = patch.job
    rec = getattr(job, "recording", None)
    if rec is None or rec.in_id_branch or not job.active or job.current_pass is None:
        return
    inner = patch.inner
    adapters = list(getattr(inner, "ipadapters", ()))
    face = [i for i, a in enumerate(adapters) if adapter_kind(a) is not None]
    if not face:
        return
    i = face[0]
    sigmas = extra_options.get("sigmas")
    if sigmas is not None and not (float(at(getattr(inner, "sigma_end", None), i, -float("inf")))
                                   <= float(sigmas[0])
                                   <= float(at(getattr(inner, "sigma_start", None), i, float("inf")))):
        return   # outside the unit's start/end: Forge does not apply the face at all
    rows, tokens, width = q.shape
    chunks = list(extra_options.get("cond_or_uncond") or [])   # what the IP-Adapter sees (its k per chunk)
    recorder = _recorder(job, adapters[i], rows, extra_options, None)
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
        if str(at(getattr(inner, "weight_type", None), i, "original")).startswith("linear"):
            ip_k = ip_k * float(at(inner.weights, i, 1.0))
        qh = q.view(rows, tokens, heads, head_dim).transpose(1, 2)
        kh = ip_k.to(q.dtype).view(rows, -1, heads, head_dim).transpose(1, 2)
        recording.record_maps(recorder, qh, kh)

