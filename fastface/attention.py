"""Attention manipulation (AM) on the face branch of IP-Adapter's decoupled cross-attention.

The IP-Adapter adds, to every attn2 output, λ·softmax(Q·K'ᵀ/√d)·V' where K', V' project the face
tokens (T = 4 for FaceID / Plus / Plus-v2, 16 for Portrait). No host materialises those
probabilities (they all call fused attention), so hosts call `ip_attention` for that branch and
pass a transform. The text branch is never touched here.

Shapes (diffusers naming):
    q          (B, heads, L, d)   queries of the image tokens, L = H·W of the block
    k, v       (B, heads, T, d)   face-token keys / values
    attn       (B, heads, L, T)   face attention probabilities ("rows" = B)

Everything is computed in fp32 and cast back to the query dtype.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import torch

from .config import FastFaceArgs
from .schedule import softmask_params

Tensor = torch.Tensor
QUANTILE_FLOOR = 1e-6   # the authors clamp the quantile to ≥ 1e-6
ADAIN_EPS = 1e-6        # added to the std in AdaIN, as in the authors' code


class AttentionTransform(Protocol):
    """Maps face attention probabilities (B, heads, L, T) to new values of the same shape.

    `output_adain` (or None): weight w of the AdaIN blend applied to the branch output
    A'·V' against the untransformed A·V (statistics over d_head)."""

    output_adain: Optional[float]

    def __call__(self, attn: Tensor) -> Tensor: ...


def ip_attention(q: Tensor, k: Tensor, v: Tensor, transform: Optional[AttentionTransform] = None) -> Tensor:
    """softmax(q·kᵀ/√d) [→ transform] · v, explicitly, in fp32; returns (B, heads, L, d)."""
    qf, kf, vf = q.float(), k.float(), v.float()
    scores = torch.matmul(qf, kf.transpose(-1, -2)) * (qf.shape[-1] ** -0.5)  # (B, h, L, T)
    attn = scores.softmax(dim=-1)
    if transform is None:
        return torch.matmul(attn, vf).to(q.dtype)
    transformed = transform(attn)
    out = torch.matmul(transformed, vf)
    weight = getattr(transform, "output_adain", None)
    if weight is not None and weight < 1.0:
        out = _output_adain(out, transformed, attn, vf, weight)
    return out.to(q.dtype)


def _output_adain(out: Tensor, attn: Tensor, attn_orig: Tensor, v: Tensor, weight: float) -> Tensor:
    """`adain_blend(out, attn_orig·v, weight, dim=-1)` without materialising attn_orig·v.

    Every output row is a mix of the T value rows, so its statistics over d_head follow from
    the map and v's own statistics: μ = A·m and σ² = A·C·Aᵀ, with m the mean of each value row and
    C their (unbiased) covariance over d_head. That costs (L × T × T) instead of several passes
    over (L × d_head), and the blend becomes one scale-and-shift of `out`."""
    d = v.shape[-1]
    if d < 2:
        return out
    mean_v = v.mean(dim=-1, keepdim=True)                       # (B, h, T, 1)
    centered = v - mean_v
    cov = torch.matmul(centered, centered.transpose(-1, -2)) / (d - 1)   # (B, h, T, T)

    def stats(a):
        mean = torch.matmul(a, mean_v)                           # (B, h, L, 1)
        var = (torch.matmul(a, cov) * a).sum(dim=-1, keepdim=True)
        return mean, var.clamp_min(0.0).sqrt()

    mean_x, std_x = stats(attn)
    mean_r, std_r = stats(attn_orig)
    gain = std_r / (std_x + ADAIN_EPS)
    scale = weight + (1.0 - weight) * gain
    shift = (1.0 - weight) * (mean_r - mean_x * gain)
    if not (torch.isfinite(scale).all() and torch.isfinite(shift).all()):
        return out
    return torch.addcmul(shift, out, scale)


def scale_power(attn: Tensor, s: float, p: float, clamp_max: float = 10.0) -> Tensor:
    """AM1: min(s·Aᵖ, clamp_max), elementwise (the authors apply pow, then scale, then clamp).

    Negative inputs (never produced by softmax) are floored at 0 so a fractional power cannot
    produce NaN."""
    a = attn.float().clamp_min(0.0)
    return (a.pow(p) * s).clamp(max=clamp_max).to(attn.dtype)


def quantile_along(x: Tensor, q: float, dim: int) -> Tensor:
    """Linear-interpolation quantile along `dim` (keepdim), like torch.quantile's default, but
    through a sort so it has no input-size limit (torch.quantile refuses > 2²⁴ elements)."""
    n = x.shape[dim]
    ordered = x.sort(dim=dim).values
    pos = q * (n - 1)
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    lower = ordered.narrow(dim, lo, 1)
    upper = ordered.narrow(dim, hi, 1)
    return lower + (upper - lower) * frac


def _group_min_max(x: Tensor, groups: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """Min and max per token over (rows in the same group, heads, L) of a token-major map
    x (R, heads, T, L); shaped (R, 1, T, 1) to broadcast against it."""
    rows, tokens = x.shape[0], x.shape[2]
    row_min = x.amin(dim=(1, 3))  # (R, T)
    row_max = x.amax(dim=(1, 3))
    if groups is None:
        mn = row_min.amin(dim=0, keepdim=True).expand(rows, tokens)
        mx = row_max.amax(dim=0, keepdim=True).expand(rows, tokens)
    else:
        _, inverse = torch.unique(groups.to(x.device), return_inverse=True)
        n_groups = int(inverse.max()) + 1
        index = inverse[:, None].expand(rows, tokens)
        g_min = torch.full((n_groups, tokens), float("inf"), device=x.device).scatter_reduce(
            0, index, row_min, reduce="amin")
        g_max = torch.full((n_groups, tokens), float("-inf"), device=x.device).scatter_reduce(
            0, index, row_max, reduce="amax")
        mn, mx = g_min[inverse], g_max[inverse]
    return mn[:, None, :, None], mx[:, None, :, None]


def _minmax_norm_token_major(x: Tensor, groups: Optional[Tensor]) -> Tensor:
    mn, mx = _group_min_max(x, groups)
    span = mx - mn
    # 1/span on the small (R, 1, T, 1) statistics, so the full-size work is one subtract-multiply.
    inv_span = torch.where(span > 0, 1.0 / span.clamp_min(torch.finfo(x.dtype).tiny), torch.zeros_like(span))
    return (x - mn) * inv_span


def _token_major(attn: Tensor) -> Tensor:
    """(R, heads, L, T) → contiguous fp32 (R, heads, T, L): every reduction over L (quantile,
    min/max) then runs along contiguous memory instead of a stride-T walk."""
    return attn.float().transpose(-1, -2).contiguous()


def minmax_norm(x: Tensor, groups: Optional[Tensor] = None) -> Tensor:
    """(x − min)/(max − min) per token, pooled over heads, L and the rows of one group;
    x is (R, heads, L, T).

    groups=None pools every row of the call (the authors' `norm_attn_map`, which pools the whole
    batch: all images and all three DCG branches). A constant pool (max = min) maps to 0 instead
    of the authors' 0/0."""
    return _minmax_norm_token_major(_token_major(x), groups).transpose(-1, -2).to(x.dtype)


def _softmask_token_major(t: Tensor, quantile: float, d: float, s: float, invert_first: bool,
                          clamp_max: float, groups: Optional[Tensor]) -> Tensor:
    """`softmask` on a token-major fp32 map t (R, heads, T, L); t is modified in place."""
    if invert_first:
        t[:, :, 0] = 1.0 - t[:, :, 0]
    q = quantile_along(t, quantile, dim=3).clamp_min(QUANTILE_FLOOR)
    mask = _minmax_norm_token_major(torch.sigmoid(d * (_minmax_norm_token_major(t, groups) - q)), groups)
    mask = (s * mask).clamp(max=clamp_max)
    if invert_first:
        first = mask[:, :, 0]
        mask[:, :, 0] = first.amax(dim=-1, keepdim=True) - first
    return mask


def softmask(attn: Tensor, quantile: float, d: float, s: float, invert_first: bool = True,
             clamp_max: float = 10.0, groups: Optional[Tensor] = None) -> Tensor:
    """AM2's scheduled softmask on all face tokens (the authors' `adaptive_softmask` + `scale`).

    1. token 0 ← 1 − token 0 (if `invert_first`): FaceID-Plus-v2's token 0 looks at the background;
    2. q ← quantile of each (row, head, token) map over L, on these raw values, floored at 1e-6;
    3. M ← norm(sigmoid(d·(norm(T) − q)))  — norm is `minmax_norm` with `groups` (see there);
    4. M ← min(s·M, clamp_max);
    5. token 0 ← max_L(token 0) − token 0 (per row and head) to undo step 1.
    """
    mask = _softmask_token_major(_token_major(attn), quantile, d, s, invert_first, clamp_max, groups)
    return mask.transpose(-1, -2).to(attn.dtype)


def _centered_std(x: Tensor, dim: int, mean: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """(x − μ, unbiased σ) along `dim`, written out: torch.std over a short, strided axis (the 4
    face tokens) is several times slower than these three elementwise passes."""
    centered = x - (x.mean(dim=dim, keepdim=True) if mean is None else mean)
    var = centered.square().sum(dim=dim, keepdim=True) / (x.shape[dim] - 1)
    return centered, var.sqrt()


def adain_blend(x: Tensor, reference: Tensor, weight: float, dim: int) -> Tensor:
    """w·x + (1 − w)·AdaIN(x → statistics of `reference` along `dim`).

    AdaIN(x) = (x − μ(x))/(σ(x) + 1e-6)·σ(ref) + μ(ref), σ unbiased. If the statistics are not
    finite (e.g. a single element along `dim`, or an infinite reference) x is returned unchanged,
    as the authors' code does for the output."""
    if weight >= 1.0 or x.shape[dim] < 2:
        return x
    xf, rf = x.float(), reference.float()
    centered_x, std_x = _centered_std(xf, dim)
    mean_r = rf.mean(dim=dim, keepdim=True)
    _, std_r = _centered_std(rf, dim, mean_r)
    gain = std_r / (std_x + ADAIN_EPS)  # small: the statistics' shape
    if not (torch.isfinite(gain).all() and torch.isfinite(mean_r).all()):
        return x
    # w·x + (1 − w)·(centered·gain + μ_ref), as two fused full-size passes
    blended = torch.addcmul(xf * weight + (1.0 - weight) * mean_r, centered_x, gain * (1.0 - weight))
    return blended.to(x.dtype)


@dataclass(frozen=True)
class ScalePower:
    s: float
    p: float
    clamp_max: float = 10.0
    output_adain: Optional[float] = None

    def __call__(self, attn: Tensor) -> Tensor:
        return scale_power(attn, self.s, self.p, self.clamp_max)


@dataclass(frozen=True)
class Softmask:
    quantile: float
    d: float
    s: float
    invert_first: bool = True
    clamp_max: float = 10.0
    adain: float = 0.7
    groups: Optional[Tensor] = None

    @property
    def output_adain(self) -> Optional[float]:
        return self.adain

    def __call__(self, attn: Tensor) -> Tensor:
        original = _token_major(attn)
        masked = _softmask_token_major(original.clone(), self.quantile, self.d, self.s,
                                       self.invert_first, self.clamp_max, self.groups)
        # AdaIN on the map: statistics over the token axis (dim 2 in token-major layout).
        return adain_blend(masked, original, self.adain, dim=2).transpose(-1, -2).to(attn.dtype)


def part_enabled(args: FastFaceArgs, part: str) -> bool:
    return {"down": args.am_down, "mid": args.am_mid, "up": args.am_up}[part]


def transform_for(args: FastFaceArgs, part: str, step: int, total: int,
                  groups: Optional[Tensor] = None) -> Optional[AttentionTransform]:
    """The transform for one attn2 layer in UNet part `part` ('down' / 'mid' / 'up') at a step,
    or None when AM leaves that layer alone (the host then keeps its own fused path).

    `groups` (one id per row, e.g. the image index) limits the softmask's min-max pooling to the
    rows of one image; None pools every row of the call, like the authors' code."""
    if not args.enabled or args.am_mode == "off" or not part_enabled(args, part):
        return None
    if args.am_mode == "scale-power":
        s = {"down": args.sp_s_down, "mid": args.sp_s_mid, "up": args.sp_s_up}[part]
        return ScalePower(s=s, p=args.sp_p, clamp_max=args.clamp_max)
    if args.am_mode == "softmask":
        d, s = softmask_params(step, total, args)
        return Softmask(quantile=args.sm_quantile, d=d, s=s, invert_first=args.sm_invert_first,
                        clamp_max=args.clamp_max, adain=args.sm_adain, groups=groups)
    raise ValueError(f"unknown AM mode {args.am_mode!r}")
