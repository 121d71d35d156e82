"""The AM transforms of the face attention map, and their torch implementations.

A transform maps the face-token attention probabilities A = softmax(Q·K'ᵀ/√d) (B, heads, L, T) of
IP-Adapter's decoupled cross-attention to new values of the same shape, before `·V'`:

    ScalePower   AM1: min(s·Aᵖ, clamp_max)
    Softmask     AM2: a scheduled soft mask of each face token's map, then AdaIN over the tokens

`transform_for` picks the transform of one attn2 layer at one step from the schema, and
`TransformCache` memoises it per job. This module is the contract both face-branch paths share:
the torch path (`method.attention`) and the fused Triton kernels (`fastface.kernels`) import it,
and neither imports the other's internals. It imports the schema and `method.schedule` only.

Hot-path rules (issue #8): no host-device synchronisation, guards are `torch.where`/`nan_to_num`,
constants are built on the device once (`device_constant`), never while a CUDA graph is captured.
"""
from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Union

import torch

from ..config import FastFaceArgs
from .schedule import softmask_params

Tensor = torch.Tensor
Groups = Union[None, int, Tensor]
QUANTILE_FLOOR = 1e-6   # the authors clamp the quantile to ≥ 1e-6
ADAIN_EPS = 1e-6        # added to the std in AdaIN, as in the authors' code


class AttentionTransform(Protocol):
    """Maps face attention probabilities (B, heads, L, T) to new values of the same shape.

    `output_adain` (or None): weight w of the AdaIN blend applied to the branch output
    A'·V' against the untransformed A·V (statistics over d_head). A transform may also offer
    `token_major(t)`, the same map on the token-major layout (B, heads, T, L), which
    `ip_attention` prefers (no layout change)."""

    output_adain: Optional[float]

    def __call__(self, attn: Tensor) -> Tensor: ...


# -- dtype helpers (no dispatched no-op casts) --------------------------------------------------
def f32(t: Tensor) -> Tensor:
    """t in fp32; an fp32 tensor as it is (a dtype check, not a dispatched no-op `.float()`)."""
    return t if t.dtype == torch.float32 else t.float()


def as_dtype(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)


# -- AdaIN ---------------------------------------------------------------------------------------
def adain_blend_lean(x: Tensor, reference: Tensor, weight: float, dim: int,
                     reference_mean: Optional[float] = None) -> Tensor:
    """`adain_blend` without a host sync and in few kernels (the face branch's version).

    Written as x + (1 − w)·δ with δ = (x − μx)·g + μr − x, g = σr/(σx + ε), which is
    w·x + (1 − w)·AdaIN(x) rearranged. Where a statistic is not finite (an infinite reference)
    δ is zeroed, so that position keeps x — `adain_blend` instead returns the whole tensor
    unchanged, which needs the host to read a flag. σ comes from a dot product of the centred
    values (torch.std / var_mean, Welford, cost several times more over a short axis), and
    `reference_mean` may give μr when it is known (a softmax's mean over its tokens is 1/T)."""
    n = x.shape[dim]
    if weight >= 1.0 or n < 2:
        return x
    xf, rf = f32(x), f32(reference)
    centered_x = torch.sub(xf, xf.sum(dim=dim, keepdim=True), alpha=1.0 / n)
    mean_r = rf.mean(dim=dim, keepdim=True) if reference_mean is None else reference_mean
    centered_r = rf - mean_r
    sq_x = torch.linalg.vecdot(centered_x, centered_x, dim=dim).unsqueeze(dim)   # (n − 1)·σx²
    sq_r = torch.linalg.vecdot(centered_r, centered_r, dim=dim).unsqueeze(dim)
    gain = sq_r.sqrt_().div_(sq_x.sqrt_().add_(ADAIN_EPS * (n - 1) ** 0.5))
    delta = torch.rsub(xf, mean_r).addcmul_(centered_x, gain)
    delta = delta.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    return as_dtype(torch.add(xf, delta, alpha=1.0 - weight), x.dtype)


def adain_blend(x: Tensor, reference: Tensor, weight: float, dim: int) -> Tensor:
    """w·x + (1 − w)·AdaIN(x → statistics of `reference` along `dim`).

    AdaIN(x) = (x − μ(x))/(σ(x) + 1e-6)·σ(ref) + μ(ref), σ unbiased. If the statistics are not
    finite (e.g. a single element along `dim`, or an infinite reference) x is returned unchanged,
    as the authors' code does for the output.

    A reference for tests and callers off the hot path: deciding "unchanged" for the whole tensor
    reads a value on the host. The face branch uses `adain_blend_lean`."""
    if weight >= 1.0 or x.shape[dim] < 2:
        return x
    xf, rf = x.float(), reference.float()
    std_x, mean_x = torch.std_mean(xf, dim=dim, keepdim=True)
    std_r, mean_r = torch.std_mean(rf, dim=dim, keepdim=True)
    gain = std_r / (std_x + ADAIN_EPS)
    if not (torch.isfinite(gain).all() and torch.isfinite(mean_r).all()):
        return x
    return torch.addcmul(xf * weight + (1.0 - weight) * mean_r, xf - mean_x, gain * (1.0 - weight)).to(x.dtype)


# -- scale-power ---------------------------------------------------------------------------------
def scale_power(attn: Tensor, s: float, p: float, clamp_max: float = 10.0) -> Tensor:
    """AM1: min(s·Aᵖ, clamp_max), elementwise (the authors apply pow, then scale, then clamp).

    Negative inputs (never produced by softmax) are floored at 0 so a fractional power cannot
    produce NaN. p is used as the fp32 number it rounds to (`fp32_exponent`)."""
    a = attn.float().clamp_min(0.0)
    return (a.pow(fp32_exponent(p)) * s).clamp(max=clamp_max).to(attn.dtype)


def fp32_exponent(p: float) -> float:
    """p rounded to fp32, the exponent the face branch uses on every device: torch's CPU pow takes a
    Python exponent as a double and its CUDA pow as the tensor's fp32, which differ where p rounds
    to 0 in fp32 (0ᵖ: 0 or 1); the fused kernels get fp32 too."""
    return struct.unpack("f", struct.pack("f", float(p)))[0]


# -- softmask ------------------------------------------------------------------------------------
def quantile_along(x: Tensor, q: float, dim: int) -> Tensor:
    """Linear-interpolation quantile along `dim` (keepdim), like torch.quantile's default, but
    through a sort so it has no input-size limit (torch.quantile refuses > 2²⁴ elements) and
    costs one sort and one lerp (torch.quantile runs several times more kernels)."""
    n = x.shape[dim]
    ordered = x.sort(dim=dim).values
    pos = q * (n - 1)
    lo = min(int(pos), n - 1)
    frac = pos - lo
    lower = ordered.narrow(dim, lo, 1)
    if frac == 0.0 or lo == n - 1:
        return lower
    return torch.lerp(lower, ordered.narrow(dim, lo + 1, 1), frac)


def _grouped(t: Tensor, groups: Groups) -> tuple[Tensor, Optional[Tensor]]:
    """A token-major map (R, h, T, L) as a 5-D view (G, P, h, T, L) whose min/max pooling axes
    are (0, 2, 4): rows r and r' pool together when r % P == r' % P (P = `groups` as an int;
    P = 1 pools every row). A tensor of group ids (compatibility) is returned as `same`, an
    (R, R) mask of rows that share an id, with P = 1 and G = R."""
    rows = t.shape[0]
    period = groups if isinstance(groups, int) else 1
    if period < 1 or rows % period != 0:
        period = 1
    view = t.view(rows // period, period, *t.shape[1:])
    if isinstance(groups, Tensor):
        ids = groups.to(t.device)
        return view, ids[:, None] == ids[None, :]
    return view, None


def _pooled_min_max(x: Tensor, same: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-token min and max of a grouped map x (G, P, h, T, L) over the rows of a group, heads
    and L; shaped to broadcast against x."""
    if same is None:
        return x.amin(dim=(0, 2, 4), keepdim=True), x.amax(dim=(0, 2, 4), keepdim=True)
    row_min = x.amin(dim=(1, 2, 4))        # (R, T) with P = 1
    row_max = x.amax(dim=(1, 2, 4))
    inf = torch.full_like(row_min, float("inf"))
    g_min = torch.where(same[:, :, None], row_min[None], inf[None]).amin(dim=1)    # (R, T)
    g_max = torch.where(same[:, :, None], row_max[None], -inf[None]).amax(dim=1)
    shape = (x.shape[0], 1, 1, x.shape[3], 1)
    return g_min.view(shape), g_max.view(shape)


def _inverse_span(mn: Tensor, mx: Tensor, scale: float) -> Tensor:
    """scale/(max − min), with 0 where max = min (a constant pool normalises to 0, not 0/0)."""
    return (mx - mn).reciprocal_().nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0).mul_(scale)


def _flip_first(tokens: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(offset, sign), shaped (T, 1), with offset + sign·x = (1 − x₀, x₁, …): token 0 inverted in
    one kernel."""
    return device_constant(_make_flip, tokens, device)




def device_constant(make: Callable, size: int, device: torch.device):
    """`make(size, device)`, built once per (make, size, device) — but never cached while a CUDA
    graph is captured, where a kernel is recorded and not run, so the tensor would hold garbage."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return make(size, device)
    return _cached_constant(make, size, device)


@functools.lru_cache(maxsize=64)
def _cached_constant(make: Callable, size: int, device: torch.device):
    return make(size, device)


def _make_flip(tokens: int, device: torch.device) -> tuple[Tensor, Tensor]:
    offset = torch.zeros(tokens, 1, device=device, dtype=torch.float32)   # fp32 whatever the default dtype
    offset[0] = 1.0
    return offset, 1.0 - 2.0 * offset


def _softmask_token_major(t: Tensor, quantile: float, d: float, s: float, invert_first: bool,
                          clamp_max: float, groups: Groups) -> Tensor:
    """`softmask` on a token-major fp32 map t (R, heads, T, L); t is not modified.

    m = sigmoid(d·(norm(t) − q)) is evaluated as sigmoid(a·t + c) with a = d/span and
    c = −d·q − a·min on the small statistics, so the full-size work is one fused multiply-add."""
    if invert_first:
        offset, sign = _flip_first(t.shape[2], t.device)
        t = torch.addcmul(offset, t, sign)
    x, same = _grouped(t, groups)                                    # (G, P, h, T, L)
    q = quantile_along(x, quantile, dim=4).clamp_min_(QUANTILE_FLOOR)  # (G, P, h, T, 1)
    mn, mx = _pooled_min_max(x, same)
    a = _inverse_span(mn, mx, d)
    c = q.mul_(-d).addcmul_(mn, a, value=-1.0)
    m = torch.addcmul(c, x, a).sigmoid_()
    mn, mx = _pooled_min_max(m, same)
    mask = m.sub_(mn).mul_(_inverse_span(mn, mx, s))
    if s > clamp_max:   # s·norm ≤ s: the clamp can only bind when s exceeds it
        mask = mask.clamp_max_(clamp_max)
    if invert_first:
        first = mask.narrow(3, 0, 1)                                 # a view: written in place
        peak = first.amax(dim=4, keepdim=True)
        first.neg_().add_(peak)
    return mask.view(t.shape)


def softmask(attn: Tensor, quantile: float, d: float, s: float, invert_first: bool = True,
             clamp_max: float = 10.0, groups: Groups = None) -> Tensor:
    """AM2's scheduled softmask on all face tokens (the authors' `adaptive_softmask` + `scale`).

    1. token 0 ← 1 − token 0 (if `invert_first`): FaceID-Plus-v2's token 0 looks at the background;
    2. q ← quantile of each (row, head, token) map over L, on these raw values, floored at 1e-6;
    3. M ← norm(sigmoid(d·(norm(T) − q)))  — norm is `minmax_norm` with `groups` (see there);
    4. M ← min(s·M, clamp_max);
    5. token 0 ← max_L(token 0) − token 0 (per row and head) to undo step 1.
    """
    t = attn.float().transpose(-1, -2).contiguous()
    mask = _softmask_token_major(t, quantile, d, s, invert_first, clamp_max, groups)
    return mask.transpose(-1, -2).to(attn.dtype)


def minmax_norm(x: Tensor, groups: Groups = None) -> Tensor:
    """(x − min)/(max − min) per token, pooled over heads, L and the rows of one group;
    x is (R, heads, L, T).

    groups=None pools every row of the call (the authors' `norm_attn_map`, which pools the whole
    batch: all images and all three DCG branches); an int P pools rows r ≡ r' (mod P); a tensor
    gives each row's group id. A constant pool (max = min) maps to 0 instead of the authors' 0/0."""
    t = x.float().transpose(-1, -2).contiguous()
    grouped, same = _grouped(t, groups)
    mn, mx = _pooled_min_max(grouped, same)
    out = (grouped - mn).mul_(_inverse_span(mn, mx, 1.0))
    return out.view(t.shape).transpose(-1, -2).to(x.dtype)


# -- the transforms --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScalePower:
    s: float
    p: float
    clamp_max: float = 10.0
    output_adain: Optional[float] = None

    def __call__(self, attn: Tensor) -> Tensor:
        return scale_power(attn, self.s, self.p, self.clamp_max)

    def token_major(self, probs: Tensor, complete: bool = True) -> Tensor:
        """On softmax output (in [0, 1], so the floor at 0 of `scale_power` is moot): pow, scale,
        and the clamp only where it can bind (s·Aᵖ ≤ s). Elementwise, so `complete` (whether the
        tokens hold the whole softmax, i.e. no sink) changes nothing."""
        out = probs.pow(fp32_exponent(self.p))
        if self.s != 1.0:
            out = out.mul_(self.s)
        if self.s > self.clamp_max:
            out = out.clamp_max_(self.clamp_max)
        return out


@dataclass(frozen=True)
class Softmask:
    quantile: float
    d: float
    s: float
    invert_first: bool = True
    clamp_max: float = 10.0
    adain: float = 0.7
    groups: Groups = field(default=None, compare=False)

    @property
    def output_adain(self) -> Optional[float]:
        return self.adain

    def token_major(self, probs: Tensor, complete: bool = True) -> Tensor:
        """`complete`: the T tokens hold the whole softmax (each map sums to 1 over them). Not so
        with a zero-token sink (PuLID), whose share is left out: the AdaIN's reference mean is then
        measured, not 1/T."""
        masked = _softmask_token_major(probs, self.quantile, self.d, self.s, self.invert_first,
                                       self.clamp_max, self.groups)
        # AdaIN on the map: statistics over the face tokens (dim 2 in token-major layout)
        return adain_blend_lean(masked, probs, self.adain, dim=2,
                                reference_mean=1.0 / probs.shape[2] if complete else None)

    def __call__(self, attn: Tensor) -> Tensor:
        probs = attn.float().transpose(-1, -2).contiguous()
        return self.token_major(probs).transpose(-1, -2).to(attn.dtype)


def part_enabled(args: FastFaceArgs, part: str) -> bool:
    return {"down": args.am_down, "mid": args.am_mid, "up": args.am_up}[part]


def transform_for(args: FastFaceArgs, part: str, step: int, total: int,
                  groups: Groups = None, background_token: bool = True) -> Optional[AttentionTransform]:
    """The transform for one attn2 layer in UNet part `part` ('down' / 'mid' / 'up') at a step,
    or None when AM leaves that layer alone (the host then keeps its own fused path).

    `groups` limits the softmask's min-max pooling to the rows of one image: an int P pools rows
    r ≡ r' (mod P) (hosts pass the images per batch or rows per chunk), a tensor gives one id per
    row; None pools every row of the call, like the authors' code. `background_token=False` for an
    adapter whose token 0 is not FaceID-Plus-v2's background token (PuLID): *Invert first token*
    does not apply to it."""
    if not args.enabled or args.am_mode == "off" or not part_enabled(args, part):
        return None
    if args.am_mode == "scale-power":
        s = {"down": args.sp_s_down, "mid": args.sp_s_mid, "up": args.sp_s_up}[part]
        return ScalePower(s=s, p=args.sp_p, clamp_max=args.clamp_max)
    if args.am_mode == "softmask":
        d, s = softmask_params(step, total, args)
        return Softmask(quantile=args.sm_quantile, d=d, s=s, invert_first=args.sm_invert_first and background_token,
                        clamp_max=args.clamp_max, adain=args.sm_adain, groups=groups)
    raise ValueError(f"unknown AM mode {args.am_mode!r}")


class TransformCache:
    """`transform_for` memoised for one job: a host asks per attn2 call (70 layers × rows × steps
    on SDXL), the answer changes only with (part, step, total, groups)."""

    def __init__(self, args: FastFaceArgs):
        self.args = args
        self._memo: dict = {}

    def get(self, part: str, step: int, total: int, groups: Groups = None,
            background_token: bool = True) -> Optional[AttentionTransform]:
        if isinstance(groups, Tensor):   # not hashable by value: no memo
            return transform_for(self.args, part, step, total, groups, background_token)
        key = (part, step, total, groups, background_token)
        try:
            return self._memo[key]
        except KeyError:
            transform = self._memo[key] = transform_for(self.args, part, step, total, groups, background_token)
            return transform
