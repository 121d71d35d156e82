"""The launcher of the fused face branch: `method.attention.ip_attention` as Triton kernels, for CUDA.

Same values as the torch path (`method.attention.ip_attention(q, k, v, transform)`, the reference and the
fallback) in far fewer launches: the torch path is ~10 small kernels for scale-power and ~30 for the
softmask, each a host round trip, while the face branch's GPU work is tiny (T ≤ 32 face tokens).

    q (B, H, L, d), k / v (B, H, T, d)  →  out (B, H, L, d) in q's dtype; fp32 inside.
    A = softmax(q·kᵀ/√d) over T         (B, H, L, T)
    sink = n: n more all-zero tokens in the denominator only (PuLID's padding; `method.attention`)

Launches per call (no host-device sync, nothing created on the CPU: CUDA-graph capturable):
  * no transform, `ScalePower`: ONE kernel (`direct_kernel`), per block of queries:
        A → A' = min(s·Aᵖ, clamp) → A'·v → [output AdaIN, when the transform asks for it]
  * `Softmask`: THREE kernels, because its quantile over L and its min/max pools are global:
        1. `probs_kernel`:       A, token-major, into an fp32 scratch (B·H, T, L)
        2. `token_stats_kernel`: per (row, head, token): min_L t, max_L t, quantile_L t, with
                                 t = A (token 0: 1 − A when invert_first)
        3. `softmask_kernel`:    pooled min/max of t and of sigmoid(d·(norm t − q)) over the row group,
                                 recomputed per program from (2)'s (B·H, T) statistics (every step is
                                 monotone in t, so their extremes are at min_L t and max_L t); then per
                                 block: the mask, invert-first undone, map AdaIN over T, ·v, output AdaIN
                                 (its statistics over d taken from the output rows in registers and from
                                 A·v, one more tensor-core product; the torch path gets the same values
                                 from v's per-token mean and covariance, `method.attention._values_then_output_adain`).
    No torch op runs between them (the allocations are `torch.empty`).

Measured on an H200 (bench/bench_fused.py, SDXL attn2 at 1024², 3 rows, fp16, T 4 / 16, GPU µs per
call in a CUDA graph, fused vs the torch path of main at a5888c6): L 4096 × 10 heads: none 28 vs
109-119, scale-power 28 vs 119-138, softmask + AdaIN 66 / 109 (that torch path was not capturable);
L 1024 × 20 heads: 17 vs 63-80 and 44 / 80 for the softmask. Eager, per call: ~40 µs for one launch (Triton's launcher) vs 105-157 µs,
and ~100-122 µs vs ~1.5 ms for the softmask.

The one documented difference: the torch path's finite guards of the two AdaINs look at the whole
call (one non-finite statistic leaves every row unblended); here they are per query row. Both agree
whenever the statistics are finite, i.e. for any finite input. Values: fp32 within 1e-5 (abs + rel),
fp16 / bf16 within one ulp of the output dtype (both round the same fp32 result).

Anything outside this contract (another transform, tensor `groups`, T > 32, d > 256, mixed dtypes,
inputs that need gradients) raises NotImplementedError so the caller keeps the torch path.
Triton is optional: without it this module imports and `available()` is False.
"""
from __future__ import annotations

import functools
import importlib
import os
import struct
from types import SimpleNamespace
from typing import Optional

import torch

from ..method.transforms import ADAIN_EPS, QUANTILE_FLOOR, ScalePower, Softmask

Tensor = torch.Tensor

MAX_TOKENS = 32          # face tokens T (4: FaceID / Plus / Plus-v2, 16: Portrait, 10: PuLID, 32: PuLID v1.1)
MAX_HEAD_DIM = 256       # d (SDXL 64; SD1.5 40 / 80 / 160, padded to powers of two)
MAX_POOL_VALUES = 4096 * 16   # (rows · heads) × T_PAD statistics one softmask program pools (4096 rows·heads at T ≤ 16)
STATS_BLOCK = 4096       # L up to this stays in registers for the quantile; longer L is streamed
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install
        return False
    return True


@functools.lru_cache(maxsize=None)
def _available(device_type: str, interpret: bool) -> bool:
    if not _triton_importable():
        return False
    if interpret:  # Triton's CPU interpreter (tests)
        return True
    return device_type == "cuda" and torch.cuda.is_available()


def available(device) -> bool:
    """Whether `face_attention` can run for tensors on `device`: Triton importable, and the device is
    CUDA (or TRITON_INTERPRET=1, Triton's CPU interpreter, for tests). Cached."""
    return _available(torch.device(device).type, _interpret_requested())


_LOADED: dict = {}


def _kernels() -> SimpleNamespace:
    """The kernels, built in the mode TRITON_INTERPRET asks for now (Triton fixes the mode when it
    decorates a kernel, so a module imported in the other mode is reloaded)."""
    interpret = _interpret_requested()
    kernels = _LOADED.get(interpret)
    if kernels is None:
        from . import triton_face as module
        if module.INTERPRETED != interpret:
            module = importlib.reload(module)
        if not module.KERNELS_DEFINED:
            raise NotImplementedError("triton is not importable")
        kernels = SimpleNamespace(direct=module.direct_kernel, probs=module.probs_kernel,
                                  token_stats=module.token_stats_kernel, softmask=module.softmask_kernel)
        _LOADED[interpret] = kernels
    return kernels


def _pow2(n: int, at_least: int = 16) -> int:
    return max(at_least, 1 << max(0, n - 1).bit_length())


def _zero_pow(p: float) -> float:
    """0ᵖ as torch computes it on an fp32 tensor: with p rounded to fp32 (as the kernel gets it too),
    1 for p = 0, 0 for p > 0, inf for p < 0."""
    p32 = struct.unpack("f", struct.pack("f", p))[0]
    return 1.0 if p32 == 0 else (0.0 if p32 > 0 else float("inf"))


def _check(q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape:
        raise NotImplementedError(f"shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    b, h, length, d = q.shape
    if k.shape[0] != b or k.shape[1] != h or k.shape[3] != d:
        raise NotImplementedError(f"shapes q {tuple(q.shape)}, k {tuple(k.shape)}")
    tokens = k.shape[2]
    if not (1 <= tokens <= MAX_TOKENS and 1 <= d <= MAX_HEAD_DIM and length >= 1 and b * h >= 1):
        raise NotImplementedError(f"T = {tokens}, d = {d}, L = {length}")
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise NotImplementedError(f"dtypes {q.dtype}, {k.dtype}, {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise NotImplementedError("inputs on different devices")
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        raise NotImplementedError("the fused face branch has no backward")


def _pool_period(groups) -> int:
    """Softmask `groups` → the period P of the min-max pools (row r pools with r' ≡ r mod P)."""
    if groups is None:
        return 1
    if isinstance(groups, int) and not isinstance(groups, bool) and groups >= 1:
        return groups
    raise NotImplementedError(f"softmask groups {type(groups).__name__} (only None or an int period)")


def face_attention(q: Tensor, k: Tensor, v: Tensor, transform=None, *, sink: int = 0,
                   block_l: Optional[int] = None, stats_block: Optional[int] = None,
                   search_ways: Optional[int] = None, stats_warps: Optional[int] = None) -> Tensor:
    """`method.attention.ip_attention(q, k, v, transform, sink=sink)` through the fused kernels; (B, H, L, d)
    in q.dtype.

    transform: None, `ScalePower` or `Softmask` (groups None or an int period); anything else raises
    NotImplementedError. `block_l` / `stats_block` / `search_ways` (a power of two ≥ 2) /
    `stats_warps` override the block sizes, the quantile search's fan-out and its warps (tests use
    small blocks to cover partial blocks and the streamed quantile; the bench compares variants)."""
    _check(q, k, v)
    if not (isinstance(sink, int) and not isinstance(sink, bool) and sink >= 0):
        raise NotImplementedError(f"sink {sink!r}")
    if transform is not None and type(transform) not in (ScalePower, Softmask):
        raise NotImplementedError(f"transform {type(transform).__name__}")
    kernels = _kernels()
    b, h, length, d = q.shape
    tokens = k.shape[2]
    t_pad, d_pad = _pow2(tokens), _pow2(d)
    if block_l is None:
        block_l = 64 if d_pad <= 128 else 32
    scale = d ** -0.5
    # fp16 / bf16 products on tensor cores (exact, fp32 accumulation); fp32 as fp32. bf16 goes the fp32
    # way in Triton's CPU interpreter, whose bf16 tl.dot is wrong (3.9); the GPU sweep of
    # bench/bench_fused.py covers bf16 on tensor cores.
    native = q.dtype == torch.float16 or (q.dtype == torch.bfloat16 and not _interpret_requested())
    parts = 3 if q.dtype == torch.bfloat16 else 2
    out = torch.empty((b, h, length, d), dtype=q.dtype, device=q.device)
    grid = (triton_cdiv(length, block_l), b * h)
    with _on_device(q):
        if transform is None or type(transform) is ScalePower:
            sp = transform is not None
            weight = transform.output_adain if sp else None
            out_adain = weight is not None and weight < 1.0 and d >= 2
            w = 1.0 if weight is None else float(weight)
            kernels.direct[grid](
                q, k, v, out, *q.stride(), *k.stride(), *v.stride(), *out.stride(),
                h, length, tokens, d, scale, float(sink),
                float(transform.s) if sp else 1.0, float(transform.p) if sp else 1.0,
                _zero_pow(float(transform.p)) if sp else 0.0,
                float(transform.clamp_max) if sp else 0.0, w, 1.0 - w, ADAIN_EPS,
                SCALE_POWER=sp, OUT_ADAIN=out_adain, NATIVE=native, SINK=sink > 0, PARTS=parts,
                BLOCK_L=block_l, T_PAD=t_pad, D_PAD=d_pad, num_warps=4)
            return out
        return _softmask(kernels, q, k, v, out, transform, grid, block_l, t_pad, d_pad, scale, sink,
                         stats_block, search_ways, stats_warps, native, parts)


def _softmask(kernels, q, k, v, out, sm: Softmask, grid, block_l, t_pad, d_pad, scale, sink,
              stats_block, search_ways, stats_warps, native, parts):
    b, h, length, d = q.shape
    tokens = k.shape[2]
    period = _pool_period(sm.groups)
    if sm.adain is None:
        raise NotImplementedError("softmask without an AdaIN weight")
    rows_heads = b * h
    rh_pad = _pow2(rows_heads, 1)
    if rh_pad * t_pad > MAX_POOL_VALUES:
        raise NotImplementedError(f"{rows_heads} rows·heads")
    w = float(sm.adain)
    probs = torch.empty((rows_heads, tokens, length), dtype=torch.float32, device=q.device)   # (B·H, T, L)
    stats = torch.empty((3, rows_heads, tokens), dtype=torch.float32, device=q.device)         # min, max, q

    # 1. A, token-major
    kernels.probs[grid](q, k, probs, *q.stride(), *k.stride(), h, length, tokens, d, scale, float(sink),
                        NATIVE=native, SINK=sink > 0, BLOCK_L=block_l, T_PAD=t_pad, D_PAD=d_pad, num_warps=4)
    # 2. per (row·head, token) min, max and the quantile (torch's linear interpolation, positions
    #    fixed by L alone: x₍lo₎ + (x₍hi₎ − x₍lo₎)·frac over the sorted values)
    pos = float(sm.quantile) * (length - 1)
    k_lo = int(pos)
    k_hi = min(k_lo + 1, length - 1)
    chunk = stats_block or min(_pow2(length), STATS_BLOCK)
    ways = search_ways or (16 if chunk <= 1024 else 4)   # the (ways, chunk) compare tile stays ≤ 16K
    kernels.token_stats[(tokens, rows_heads)](
        probs, stats, rows_heads, length, tokens, k_lo, k_hi, pos - k_lo, QUANTILE_FLOOR,
        INVERT_FIRST=bool(sm.invert_first), BLOCK=chunk, ONE_CHUNK=length <= chunk,
        CHUNKS=_pow2(triton_cdiv(length, chunk), 1), WAYS=ways, ITERS=-(-32 // (ways.bit_length() - 1)),
        num_warps=stats_warps or 4)  # H200, L 4096, T 16: 55 µs with 4 warps, 61 with 8, 64 with 16
    # 3. pooled statistics → mask → map AdaIN → ·v → output AdaIN
    kernels.softmask[grid](
        probs, stats, v, out, *v.stride(), *out.stride(),
        b, h, length, tokens, d, period, float(sm.d), float(sm.s), float(sm.clamp_max), w, 1.0 - w, ADAIN_EPS,
        INVERT_FIRST=bool(sm.invert_first), MAP_ADAIN=w < 1.0 and tokens >= 2, OUT_ADAIN=w < 1.0 and d >= 2,
        NATIVE=native, PARTS=parts,
        BLOCK_L=block_l, T_PAD=t_pad, D_PAD=d_pad, RH_PAD=rh_pad, num_warps=4)
    return out


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


class _NoDevice:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


_NO_DEVICE = _NoDevice()


def _on_device(t: Tensor):
    """Triton launches on the current CUDA device; switch only when the inputs live on another."""
    if t.is_cuda and t.device.index is not None and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return _NO_DEVICE
