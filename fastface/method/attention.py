"""The face branch of IP-Adapter's decoupled cross-attention, computed explicitly (the torch path).

The IP-Adapter adds, to every attn2 output, λ·softmax(Q·K'ᵀ/√d)·V' where K', V' project the face
tokens (T = 4 for FaceID / Plus / Plus-v2, 16 for Portrait). No host materialises those
probabilities (they all call fused attention), so hosts call `ip_attention` for that branch and
pass a transform (`method.transforms`). The text branch is never touched here. On CUDA with
Triton, `ip_attention` hands the whole branch to the fused kernels (`fastface.kernels`, imported
lazily) when the job's `KernelSwitch` allows it; this module is their reference and fall-back.

Shapes (diffusers naming):
    q          (B, heads, L, d)   queries of the image tokens, L = H·W of the block
    k, v       (B, heads, T, d)   face-token keys / values
    attn       (B, heads, L, T)   face attention probabilities ("rows" = B)

The zero-token sink (PuLID): sd-webui-controlnet's PuLID appends `sink` all-zero tokens (8 or 16)
to its 10 id tokens, and its K/V projections have no bias, so those tokens have k = v = 0 exactly:
each scores 0 and adds exp(0) = 1 to the softmax denominator and nothing to A·V. `sink=n` says so
without materialising them: A = exp(s)/(Σ_T exp(s) + n) over the T real tokens, which equals
explicit zero-padding of k and v to T + n tokens for no transform and for the (elementwise)
scale-power. The softmask's per-token statistics and its map AdaIN run over the T real tokens only:
the padding carries no face, so it neither takes part in the min-max pools nor dilutes the AdaIN's
mean and spread (a choice of FastFace's; the authors' code has no PuLID).

Inside, the map is kept *token-major*, (B, heads, T, L): it is produced that way by one matmul
(K'·Qᵀ), every reduction over L (quantile, min/max) runs along contiguous memory, and the
softmax / AdaIN over the T face tokens is a reduction over an outer axis, which PyTorch runs far
faster than one over a short innermost axis. The `·V'` product reads the transposed view without
a copy.

Hot-path rules (issue #8): no host-device synchronisation (no `.item()`, no `int()`/`bool()` of a
tensor, no `torch.unique`, no CPU tensor made per call), guards are `torch.where`/`nan_to_num`,
and per-call Python stays small; every path here passes `torch.compile(fullgraph=True)` (tested).
Everything is computed in fp32 and cast back to the query dtype.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .transforms import ADAIN_EPS, AttentionTransform, as_dtype, device_constant, f32

Tensor = torch.Tensor

log = logging.getLogger("fastface")


Recorder = Callable[[Tensor, Optional[Tensor]], None]


@dataclass
class KernelSwitch:
    """Per job: may `ip_attention` use the fused Triton face branch? A kernel error turns it off
    (one log line) and the torch path serves the rest of the job."""

    enabled: bool = True
    failed: Optional[str] = None


# -- the face branch ---------------------------------------------------------------------------
def face_probs_token_major(q: Tensor, k: Tensor, sink: int = 0, scale: Optional[float] = None) -> Tensor:
    """softmax(q·kᵀ·scale) over the face tokens, fp32, token-major (B, heads, T, L); `scale` 1/√d
    unless given; with `sink` zero tokens (score 0) in the denominator only."""
    qf, kf = f32(q), f32(k)
    scale = qf.shape[-1] ** -0.5 if scale is None else scale
    scores = torch.matmul(kf * scale, qf.transpose(-1, -2))                    # (B, h, T, L)
    if not sink:
        return scores.softmax(dim=-2)
    # exp(s − m) / (Σ exp(s − m) + sink·exp(−m)) with m = max(max_T s, 0), the largest score of the
    # padded softmax, so nothing overflows
    top = scores.amax(dim=-2, keepdim=True).clamp_min_(0.0)          # (B, h, 1, L)
    e = scores.sub_(top).exp_()
    return e.div_(e.sum(dim=-2, keepdim=True).add_(top.neg_().exp_().mul_(float(sink))))


def ip_attention(q: Tensor, k: Tensor, v: Tensor, transform: Optional[AttentionTransform] = None, *,
                 sink: int = 0, recorder: Optional[Recorder] = None,
                 kernels: Optional[KernelSwitch] = None) -> Tensor:
    """softmax(q·kᵀ/√d) [→ transform] · v in fp32; returns (B, heads, L, d) in q's dtype.

    `sink`: the number of extra all-zero face tokens (k = v = 0) the host's softmax has (PuLID's
    padding; module docstring), counted in the denominator and never materialised.
    `recorder(attn, attn_transformed)` (both (B, heads, L, T) fp32 views; the second None without
    a transform) sees the maps of this very call; `kernels` allows the fused Triton kernels on
    CUDA (never while recording)."""
    if kernels is not None and kernels.enabled and recorder is None:
        out = _fused(q, k, v, transform, kernels, sink)
        if out is not None:
            return out
    if transform is None and recorder is None and not sink:
        return as_dtype(F.scaled_dot_product_attention(f32(q), f32(k), f32(v)), q.dtype)
    vf = f32(v)
    probs = face_probs_token_major(q, k, sink)                     # (B, h, T, L)
    mapped = probs if transform is None else transform_token_major(transform, probs, sink)
    if recorder is not None:
        recorder(probs.transpose(-1, -2), None if transform is None else mapped.transpose(-1, -2))
    weight = getattr(transform, "output_adain", None)
    if weight is None or weight >= 1.0 or vf.shape[-1] < 2:
        out = torch.matmul(mapped.transpose(-1, -2), vf)           # (B, h, L, d)
    elif probs.shape[-1] >= LARGE_MAP:
        out = _values_then_output_adain(mapped, probs, vf, weight)
    else:
        out = _values_with_output_adain(mapped, probs, vf, weight)
    return as_dtype(out, q.dtype)


def transform_token_major(transform: AttentionTransform, probs: Tensor, sink: int = 0) -> Tensor:
    """`transform` on token-major probabilities (B, heads, T, L): its own token-major form where it
    has one (told whether the T tokens hold the whole softmax, i.e. no sink), else through the
    (B, heads, L, T) layout."""
    if hasattr(transform, "token_major"):
        return transform.token_major(probs, complete=False) if sink else transform.token_major(probs)
    return transform(probs.transpose(-1, -2)).transpose(-1, -2)


LARGE_MAP = 256   # L from which the output AdaIN's statistics come from the maps (fewer FLOPs)


def _values_then_output_adain(mapped: Tensor, probs: Tensor, v: Tensor, weight: float) -> Tensor:
    """A'·V blended by AdaIN (statistics over d) towards A·V without computing A·V: every output
    row is a mix of the T value rows, so μ = A·m and σ² = A·C·Aᵀ with m the mean of each value row
    and C their (unbiased) covariance over d — (L × T × T) work instead of another (L × T × d)
    product and passes over (L × d). For large L (the CPU's big layers); small calls, where the
    number of kernels is what counts, take `_values_with_output_adain`."""
    d = v.shape[-1]
    out = torch.matmul(mapped.transpose(-1, -2), v)                     # (B, h, L, d)
    mean_v = v.mean(dim=-1, keepdim=True)                               # (B, h, T, 1)
    centred = v - mean_v
    cov = torch.matmul(centred, centred.transpose(-1, -2)).div_(d - 1)  # (B, h, T, T)

    def stats(a):                                                       # a (B, h, T, L)
        at = a.transpose(-1, -2)
        var = torch.matmul(at, cov).mul_(at).sum(dim=-1, keepdim=True)
        return torch.matmul(at, mean_v), var.clamp_min_(0.0).sqrt_()  # (B, h, L, 1) each

    mean_x, std_x = stats(mapped)
    mean_r, std_r = stats(probs)
    gain = std_r.div_(std_x.add_(ADAIN_EPS))
    shift = torch.addcmul(mean_r, mean_x, gain, value=-1.0).mul_(1.0 - weight).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    scale = gain.mul_(1.0 - weight).add_(weight).nan_to_num_(nan=1.0, posinf=1.0, neginf=1.0)
    return torch.addcmul(shift, out, scale)


def _values_with_output_adain(mapped: Tensor, probs: Tensor, v: Tensor, weight: float) -> Tensor:
    """A'·V blended by AdaIN (statistics over d) towards A·V, in one product.

    With V = Vc + μV (μV the mean of each value row over d), A'·V = A'·Vc + A'·μV: its centred part
    and its mean. So both maps, stacked, times [Vc | μV] give the centred outputs and their means
    at once, and `adain_blend` becomes
        out = (A'·Vc)·(w + (1 − w)·g) + w·μ' + (1 − w)·μ,   g = ‖A·Vc‖ / (‖A'·Vc‖ + ε·√(d − 1)).
    Where g is not finite (an infinite reference) the output is only re-centred (scale 1)."""
    d = v.shape[-1]
    maps = torch.stack((mapped, probs)).transpose(-1, -2)             # (2, B, h, L, T)
    both = torch.matmul(maps, torch.matmul(v, _centre_and_mean(d, v.device)))   # (2, B, h, L, d + 1)
    centred, means = both[..., :d], both[..., d:]
    norms = torch.linalg.vector_norm(centred, dim=-1, keepdim=True)   # (2, B, h, L, 1)
    gain = norms[1] / (norms[0] + ADAIN_EPS * (d - 1) ** 0.5)
    scale = gain.mul_(1.0 - weight).add_(weight).nan_to_num_(nan=1.0, posinf=1.0, neginf=1.0)
    return torch.addcmul(torch.lerp(means[1], means[0], weight), centred[0], scale)


def _centre_and_mean(d: int, device: torch.device) -> Tensor:
    """The (d, d + 1) matrix [I − 11ᵀ/d | 1/d]: V times it is [V − μV | μV] (fp32)."""
    return device_constant(_make_centre_and_mean, d, device)


def _make_centre_and_mean(d: int, device: torch.device) -> Tensor:
    matrix = torch.full((d, d + 1), -1.0 / d, device=device, dtype=torch.float32)   # fp32 whatever the default dtype
    matrix[:, d] = 1.0 / d
    matrix[:, :d] += torch.eye(d, device=device, dtype=torch.float32)
    return matrix


def _fused(q, k, v, transform, kernels: KernelSwitch, sink: int = 0) -> Optional[Tensor]:
    """The fused Triton face branch, or None (unavailable / unsupported / failed → torch path)."""
    try:
        from ..kernels import launch
    except Exception:  # the kernels are optional
        return None
    if not launch.available(q.device):   # CUDA with Triton (or Triton's interpreter in tests)
        return None
    try:
        return launch.face_attention(q, k, v, transform, sink=sink)
    except NotImplementedError:
        return None
    except Exception as exc:  # a kernel error must never fail the generation
        kernels.enabled = False
        kernels.failed = f"{type(exc).__name__}: {exc}"
        log.error("fused face-attention kernel failed (%s); the torch path is used for the rest of "
                  "this job", kernels.failed)
        return None
