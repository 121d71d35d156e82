"""Triton kernels of the fused face branch (see `kernels.launch` for the host side and the math).

Imported lazily by `kernels.launch` and only when Triton is importable; without Triton this module imports
but defines no kernels (`KERNELS_DEFINED` is False). Triton decides at decoration time whether a kernel
runs compiled or in its CPU interpreter (TRITON_INTERPRET=1), so `INTERPRETED` records which mode the
kernels below were built in; `kernels.launch` reloads this module when the mode asked for differs.

Shapes (per call):
    q            (B, H, L, D)   any strides, fp16 / bf16 / fp32
    k, v         (B, H, T, D)   any strides, the dtype of q
    out          (B, H, L, D)   contiguous, the dtype of q
    probs        (B·H, T, L)    fp32 scratch, token-major: softmax probabilities (softmask path only)
    stats        (3, B·H, T)    fp32: per (row·head, token) min over L, max over L, quantile over L
Blocks: BLOCK_L query rows per program; T_PAD ≥ 16 and D_PAD ≥ 16 are powers of two (tl.dot needs
16), the padding masked. Everything is computed in fp32: with fp16 / bf16 inputs (NATIVE) the two
products run on tensor cores with exact products and fp32 accumulation (q·kᵀ directly; A'·v with A'
split into fp16 / bf16 terms, see `_times_values`); fp32 inputs use true fp32 products (no TF32).
"""
from __future__ import annotations

import os

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where Triton is absent
    triton = None
    tl = None

KERNELS_DEFINED = triton is not None

if KERNELS_DEFINED:

    @triton.jit
    def _is_finite(x):
        return (x == x) & (tl.abs(x) < float("inf"))

    @triton.jit
    def _face_probs(q_row, k_row, offs_l, offs_t, offs_d, sq_l, sq_d, sk_t, sk_d, L, T, D, scale, sink,
                    NATIVE: tl.constexpr, SINK: tl.constexpr):
        """softmax(q·kᵀ·scale) over the T face tokens for one block of queries → (BLOCK_L, T_PAD) fp32;
        padded tokens are exactly 0 (exp(−inf)), padded query rows hold a harmless uniform row.
        SINK: `sink` more all-zero tokens (score 0) count in the denominator only (PuLID's padding,
        `method.attention`), with the row maximum taken over them too (m ≥ 0) as the torch path does."""
        q = tl.load(q_row + offs_l[:, None] * sq_l + offs_d[None, :] * sq_d,
                    mask=(offs_l[:, None] < L) & (offs_d[None, :] < D), other=0.0)       # (BLOCK_L, D_PAD)
        k = tl.load(k_row + offs_t[:, None] * sk_t + offs_d[None, :] * sk_d,
                    mask=(offs_t[:, None] < T) & (offs_d[None, :] < D), other=0.0)       # (T_PAD, D_PAD)
        if NATIVE:
            # fp16 / bf16 on tensor cores: the products are exact in fp32 and accumulate in fp32, so this
            # is q.float() @ k.float()ᵀ of the torch path up to the order of the sums
            scores = tl.dot(q, tl.trans(k), out_dtype=tl.float32)
        else:
            # fp32 (no TF32), like torch's fp32 matmul
            scores = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
        scores = scores * scale                                                            # (BLOCK_L, T_PAD)
        scores = tl.where(offs_t[None, :] < T, scores, float("-inf"))
        row_max = tl.max(scores, axis=1)
        if SINK:
            row_max = tl.maximum(row_max, 0.0)
        e = tl.exp(scores - row_max[:, None])
        denominator = tl.sum(e, axis=1)
        if SINK:
            denominator += sink * tl.exp(-row_max)
        return e / denominator[:, None]

    @triton.jit
    def _load_values(v_row, offs_t, offs_d, sv_t, sv_d, T, D):
        """v (T_PAD, D_PAD) in its own dtype, padding 0."""
        return tl.load(v_row + offs_t[:, None] * sv_t + offs_d[None, :] * sv_d,
                       mask=(offs_t[:, None] < T) & (offs_d[None, :] < D), other=0.0)

    @triton.jit
    def _times_values(a, v, NATIVE: tl.constexpr, PARTS: tl.constexpr):
        """a (BLOCK_L, T_PAD) fp32 · v (T_PAD, D_PAD) → fp32, as the torch path's a @ v.float().

        NATIVE (fp16 / bf16 v): a is split into PARTS terms of v's dtype, a ≈ a₁ + a₂ (+ a₃), each
        the rounding of what the previous ones left (fp16: 2 × 11 bits, bf16: 3 × 8 bits, so ~22-24
        bits as in fp32), and the products a_i·v run on tensor cores with fp32 accumulation: exact
        products of exactly represented v. Else (fp32) a true fp32 product (no TF32)."""
        if NATIVE:
            hi = a.to(v.dtype)
            rest = a - hi.to(tl.float32)
            mid = rest.to(v.dtype)
            out = tl.dot(mid, v, acc=tl.dot(hi, v, out_dtype=tl.float32))
            if PARTS == 3:
                out = tl.dot((rest - mid.to(tl.float32)).to(v.dtype), v, acc=out)
        else:
            out = tl.dot(a, v.to(tl.float32), input_precision="ieee")
        return out

    @triton.jit
    def _row_stats(x, offs_d, D):
        """Mean and unbiased std over d of each row of x (BLOCK_L, D_PAD), padding excluded."""
        mean = tl.sum(tl.where(offs_d[None, :] < D, x, 0.0), axis=1) / D
        centered = tl.where(offs_d[None, :] < D, x - mean[:, None], 0.0)
        return mean, tl.sqrt(tl.sum(centered * centered, axis=1) / (D - 1))

    @triton.jit
    def _output_adain(out, a_orig, v, offs_d, D, w, wc, eps, NATIVE: tl.constexpr, PARTS: tl.constexpr):
        """`method.transforms.adain_blend(out, a_orig·v, w, dim=-1)` for one block of rows, out (BLOCK_L, D_PAD):
        w·out + (1 − w)·((out − μ)/(σ + eps)·σ_ref + μ_ref), statistics over d. The torch path gets them
        from v's per-token mean and covariance (`method.attention._values_then_output_adain`: μ = a·m, σ² = a·C·aᵀ); here the rows
        are in registers, so the statistics are taken from them directly (one more tensor-core
        product for a_orig·v) — the same values up to fp32 rounding. The finite guard is per query
        row (the torch path checks the whole call at once; both leave rows alone when not finite)."""
        ref = _times_values(a_orig, v, NATIVE, PARTS)                                     # (BLOCK_L, D_PAD)
        mean_x, std_x = _row_stats(out, offs_d, D)                                         # (BLOCK_L,)
        mean_r, std_r = _row_stats(ref, offs_d, D)
        gain = std_r / (std_x + eps)
        scale = w + wc * gain
        shift = wc * (mean_r - mean_x * gain)
        ok = _is_finite(scale) & _is_finite(shift)
        return tl.where(ok[:, None], shift[:, None] + out * scale[:, None], out)

    @triton.jit
    def _store_out(out_row, out, offs_l, offs_d, so_l, so_d, L, D):
        tl.store(out_row + offs_l[:, None] * so_l + offs_d[None, :] * so_d,
                 out.to(out_row.dtype.element_ty), mask=(offs_l[:, None] < L) & (offs_d[None, :] < D))

    # Sizes are not specialised on (Triton would compile again for every L, T, H, ... that is or is not
    # a multiple of 16); strides are, so the loads keep their vector width.
    _SIZES = ["R", "H", "L", "T", "D", "P", "RH", "k_lo", "k_hi"]

    def _sizes_of(fn):
        import inspect
        return [name for name in inspect.signature(fn).parameters if name in _SIZES]

    def _jit(fn):
        return triton.jit(fn, do_not_specialize=_sizes_of(fn))

    # ---- kernel 1 of 1 (no transform, scale-power): softmax → [scale-power] → ·v → [output AdaIN] ----
    @_jit
    def direct_kernel(q_ptr, k_ptr, v_ptr, out_ptr,
                      sq_b, sq_h, sq_l, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d,
                      so_b, so_h, so_l, so_d,
                      H, L, T, D, scale, sink, s, p, zero_pow, clamp_max, w, wc, eps,
                      SCALE_POWER: tl.constexpr, OUT_ADAIN: tl.constexpr, NATIVE: tl.constexpr,
                      SINK: tl.constexpr, PARTS: tl.constexpr,
                      BLOCK_L: tl.constexpr, T_PAD: tl.constexpr, D_PAD: tl.constexpr):
        """grid (cdiv(L, BLOCK_L), B·H). A' = min(s·Aᵖ, clamp_max) elementwise, A = softmax over T."""
        pid_l = tl.program_id(0)
        rh = tl.program_id(1)
        b = rh // H
        h = rh % H
        offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
        offs_t = tl.arange(0, T_PAD)
        offs_d = tl.arange(0, D_PAD)
        a = _face_probs(q_ptr + b * sq_b + h * sq_h, k_ptr + b * sk_b + h * sk_h, offs_l, offs_t, offs_d,
                        sq_l, sq_d, sk_t, sk_d, L, T, D, scale, sink, NATIVE, SINK)        # (BLOCK_L, T_PAD)
        v = _load_values(v_ptr + b * sv_b + h * sv_h, offs_t, offs_d, sv_t, sv_d, T, D)    # (T_PAD, D_PAD)
        if SCALE_POWER:
            base = tl.maximum(a, 0.0)
            # aᵖ = 2^(p·log2 a) for a > 0; 0ᵖ (1 for p = 0, 0 for p > 0, inf for p < 0) comes from the host
            powered = tl.where(base > 0.0, tl.exp2(p * tl.log2(base)), zero_pow)
            a_new = tl.minimum(powered * s, clamp_max)
            a_new = tl.where(offs_t[None, :] < T, a_new, 0.0)
        else:
            a_new = a
        out = _times_values(a_new, v, NATIVE, PARTS)                                       # (BLOCK_L, D_PAD)
        if OUT_ADAIN:
            out = _output_adain(out, a, v, offs_d, D, w, wc, eps, NATIVE, PARTS)
        _store_out(out_ptr + b * so_b + h * so_h, out, offs_l, offs_d, so_l, so_d, L, D)

    # ---- softmask kernel 1 of 3: the probabilities, token-major, into a scratch buffer ----------------
    @_jit
    def probs_kernel(q_ptr, k_ptr, probs_ptr,
                     sq_b, sq_h, sq_l, sq_d, sk_b, sk_h, sk_t, sk_d,
                     H, L, T, D, scale, sink,
                     NATIVE: tl.constexpr, SINK: tl.constexpr,
                     BLOCK_L: tl.constexpr, T_PAD: tl.constexpr, D_PAD: tl.constexpr):
        """grid (cdiv(L, BLOCK_L), B·H): probs[b·H + h, t, l] = softmax(q·kᵀ/√d)[b, h, l, t]."""
        pid_l = tl.program_id(0)
        rh = tl.program_id(1)
        b = rh // H
        h = rh % H
        offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
        offs_t = tl.arange(0, T_PAD)
        offs_d = tl.arange(0, D_PAD)
        a = _face_probs(q_ptr + b * sq_b + h * sq_h, k_ptr + b * sk_b + h * sk_h, offs_l, offs_t, offs_d,
                        sq_l, sq_d, sk_t, sk_d, L, T, D, scale, sink, NATIVE, SINK)
        dst = probs_ptr + rh * T * L + offs_t[None, :] * L + offs_l[:, None]
        tl.store(dst, a, mask=(offs_l[:, None] < L) & (offs_t[None, :] < T))

    @triton.jit
    def _order_key(x):
        """fp32 → int32 with the same order (negative floats have their magnitude bits flipped)."""
        bits = x.to(tl.int32, bitcast=True)
        return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)

    # ---- softmask kernel 2 of 3: per (row·head, token) min, max and quantile over L ----------------
    @_jit
    def token_stats_kernel(probs_ptr, stats_ptr, RH, L, T, k_lo, k_hi, frac, floor,
                           INVERT_FIRST: tl.constexpr, BLOCK: tl.constexpr, ONE_CHUNK: tl.constexpr,
                           CHUNKS: tl.constexpr, WAYS: tl.constexpr, ITERS: tl.constexpr):
        """grid (T, B·H). For t = probs[rh, j, :] (token 0 inverted when INVERT_FIRST):
        stats[0] = min t, stats[1] = max t, stats[2] = max(quantile, floor) where the quantile is
        torch's linear one: x₍k_lo₎ + (x₍k_hi₎ − x₍k_lo₎)·frac over the sorted t.

        The order statistics come from a WAYS-way search on the values' bit patterns (each step counts
        the elements ≤ WAYS thresholds): exact values, no sort, any L. With ONE_CHUNK the row
        stays in registers (L ≤ BLOCK); otherwise every step streams the row in CHUNKS chunks of BLOCK
        (cdiv(L, BLOCK) rounded up to a power of two, the surplus masked: a compile-time trip count,
        and L itself is never specialised on)."""
        j = tl.program_id(0)
        rh = tl.program_id(1)
        row = probs_ptr + (rh * T + j) * L
        if INVERT_FIRST:
            flip = j == 0
        else:
            flip = j < 0
        # (helpers are inlined in the loops: each @jit call costs Triton's CPU interpreter a re-patch)
        offs = tl.arange(0, BLOCK)
        if ONE_CHUNK:
            valid = offs < L
            x = tl.load(row + offs, mask=valid, other=0.0)
            x = tl.where(flip, 1.0 - x, x)  # invert-first: token 0 becomes 1 − A
            bits = x.to(tl.int32, bitcast=True)
            key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
            mn = tl.min(tl.where(valid, x, float("inf")), axis=0)
            mx = tl.max(tl.where(valid, x, float("-inf")), axis=0)
        else:
            mn = float("inf")
            mx = float("-inf")
            for start in range(0, CHUNKS * BLOCK, BLOCK):
                valid = start + offs < L
                x = tl.load(row + start + offs, mask=valid, other=0.0)
                x = tl.where(flip, 1.0 - x, x)
                mn = tl.minimum(mn, tl.min(tl.where(valid, x, float("inf")), axis=0))
                mx = tl.maximum(mx, tl.max(tl.where(valid, x, float("-inf")), axis=0))
        # The smallest key with at least k_lo + 1 elements ≤ it is the key of x₍k_lo₎. Search [lo, hi]
        # WAYS ways at a time: count the elements ≤ each of WAYS thresholds (one (WAYS, BLOCK) compare
        # and one reduction), keep the first sub-range whose count reaches k_lo + 1. The range spans
        # < 2³² keys, so ITERS = 32 / log2(WAYS) steps leave lo == hi.
        lo = _order_key(mn).to(tl.int64)
        hi = _order_key(mx).to(tl.int64)
        ways = tl.arange(0, WAYS).to(tl.int64)
        for _ in range(ITERS):
            step = (hi - lo) // WAYS + 1
            ends = lo + (ways + 1) * step - 1                                               # (WAYS,)
            if ONE_CHUNK:
                counts = tl.sum(((key[None, :] <= ends[:, None]) & valid[None, :]).to(tl.int32), axis=1)
            else:
                counts = tl.zeros((WAYS,), tl.int32)
                for start in range(0, CHUNKS * BLOCK, BLOCK):
                    valid = start + offs < L
                    x = tl.load(row + start + offs, mask=valid, other=0.0)
                    x = tl.where(flip, 1.0 - x, x)
                    bits = x.to(tl.int32, bitcast=True)
                    key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
                    counts += tl.sum(((key[None, :] <= ends[:, None]) & valid[None, :]).to(tl.int32), axis=1)
            # counts grow with the threshold, so the first sub-range that reaches k_lo + 1 is number
            # `below` = how many thresholds fall short (the last one, ≥ hi, never does)
            below = tl.sum((counts < k_lo + 1).to(tl.int64), axis=0)
            new_lo = lo + below * step
            hi = tl.minimum(new_lo + step - 1, hi)
            lo = new_lo
        # x₍k_lo₎ is the element with that key; x₍k_hi₎ (k_hi = k_lo + 1, or k_lo at the end) is the
        # same value when enough elements tie with it, else the smallest element above it
        if ONE_CHUNK:
            x_lo = tl.max(tl.where(valid & (key <= lo), x, float("-inf")), axis=0)
            count = tl.sum((valid & (key <= lo)).to(tl.int32), axis=0)
            above = tl.min(tl.where(valid & (key > lo), x, float("inf")), axis=0)
        else:
            x_lo = float("-inf")
            above = float("inf")
            count = 0
            for start in range(0, CHUNKS * BLOCK, BLOCK):
                valid = start + offs < L
                x = tl.load(row + start + offs, mask=valid, other=0.0)
                x = tl.where(flip, 1.0 - x, x)
                bits = x.to(tl.int32, bitcast=True)
                key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
                x_lo = tl.maximum(x_lo, tl.max(tl.where(valid & (key <= lo), x, float("-inf")), axis=0))
                count += tl.sum((valid & (key <= lo)).to(tl.int32), axis=0)
                above = tl.minimum(above, tl.min(tl.where(valid & (key > lo), x, float("inf")), axis=0))
        x_hi = tl.where(count >= k_hi + 1, x_lo, above)
        quant = tl.maximum(x_lo + (x_hi - x_lo) * frac, floor)
        at = rh * T + j
        tl.store(stats_ptr + at, mn)
        tl.store(stats_ptr + RH * T + at, mx)
        tl.store(stats_ptr + 2 * RH * T + at, quant)

    @triton.jit
    def _inverse_span(mn, mx):
        """1/(max − min) where the pool is not constant, else 0 (torch path: a constant pool maps to 0)."""
        span = mx - mn
        return tl.where(span > 0.0, 1.0 / tl.maximum(span, 1.1754943508222875e-38), 0.0)

    @triton.jit
    def _sigmoid_of(t, mn1, inv1, quant, d):
        """sigmoid(d·(norm(t) − q)), norm(t) = (t − min)·1/(max − min) pooled over the row group."""
        return tl.sigmoid(d * ((t - mn1) * inv1 - quant))

    @triton.jit
    def _mask_of(sg, mn2, inv2, s, clamp_max):
        """min(s·norm(sg), clamp_max)."""
        return tl.minimum(s * ((sg - mn2) * inv2), clamp_max)

    # ---- softmask kernel 3 of 3: pooled statistics → mask → map AdaIN → ·v → output AdaIN ----------
    @_jit
    def softmask_kernel(probs_ptr, stats_ptr, v_ptr, out_ptr,
                        sv_b, sv_h, sv_t, sv_d, so_b, so_h, so_l, so_d,
                        R, H, L, T, D, P, d, s, clamp_max, w, wc, eps,
                        INVERT_FIRST: tl.constexpr, MAP_ADAIN: tl.constexpr, OUT_ADAIN: tl.constexpr,
                        NATIVE: tl.constexpr, PARTS: tl.constexpr,
                        BLOCK_L: tl.constexpr, T_PAD: tl.constexpr, D_PAD: tl.constexpr, RH_PAD: tl.constexpr):
        """grid (cdiv(L, BLOCK_L), R·H), R = B rows. Row r pools its min/max with the rows r' where
        r' % P == r % P (P = 1 pools the whole call).

        Every step of the softmask after the quantile is a monotone function of t (per row, head and
        token: subtract, multiply by a non-negative 1/span, sigmoid, ...), so the extremes over L of
        sigmoid(d·(norm(t) − q)) and of the mask are that function at min_L t and max_L t. The pooled
        statistics of both min-max norms and token 0's max_L of the mask (to undo invert-first) thus
        follow from `stats` alone; each program recomputes them for its group ((RH_PAD, T_PAD) values,
        cheap next to its block) instead of a separate reduction launch."""
        pid_l = tl.program_id(0)
        rh = tl.program_id(1)
        b = rh // H
        h = rh % H
        offs_t = tl.arange(0, T_PAD)
        tok_ok = offs_t < T

        # pooled statistics over (rows of the group, heads, L), per token: (T_PAD,)
        pool = tl.arange(0, RH_PAD)
        in_pool = (pool < R * H) & (((pool // H) % P) == (b % P))
        sel = in_pool[:, None] & tok_ok[None, :]                                           # (RH_PAD, T_PAD)
        at = pool[:, None] * T + offs_t[None, :]
        t_min = tl.load(stats_ptr + at, mask=sel, other=0.0)
        t_max = tl.load(stats_ptr + R * H * T + at, mask=sel, other=0.0)
        quant = tl.load(stats_ptr + 2 * R * H * T + at, mask=sel, other=0.0)
        mn1 = tl.min(tl.where(sel, t_min, float("inf")), axis=0)                         # (T_PAD,)
        mx1 = tl.max(tl.where(sel, t_max, float("-inf")), axis=0)
        inv1 = _inverse_span(mn1, mx1)
        sg_lo = _sigmoid_of(t_min, mn1[None, :], inv1[None, :], quant, d)                # (RH_PAD, T_PAD)
        sg_hi = _sigmoid_of(t_max, mn1[None, :], inv1[None, :], quant, d)
        mn2 = tl.min(tl.where(sel, tl.minimum(sg_lo, sg_hi), float("inf")), axis=0)     # (T_PAD,)
        mx2 = tl.max(tl.where(sel, tl.maximum(sg_lo, sg_hi), float("-inf")), axis=0)
        inv2 = _inverse_span(mn2, mx2)
        own = (pool[:, None] == rh) & tok_ok[None, :]
        own_quant = tl.sum(tl.where(own, quant, 0.0), axis=0)                            # (T_PAD,)
        if INVERT_FIRST:
            # max over L of token 0's mask (this row and head), to undo the inversion: M₀ − mask
            m_ends = tl.maximum(_mask_of(sg_lo, mn2[None, :], inv2[None, :], s, clamp_max),
                                _mask_of(sg_hi, mn2[None, :], inv2[None, :], s, clamp_max))
            first_max = tl.max(tl.where(own & (offs_t[None, :] == 0), m_ends, float("-inf")), axis=1)
            first_max = tl.max(first_max, axis=0)

        # this block of queries
        offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
        offs_d = tl.arange(0, D_PAD)
        l_ok = offs_l < L
        a = tl.load(probs_ptr + rh * T * L + offs_t[None, :] * L + offs_l[:, None],
                    mask=l_ok[:, None] & tok_ok[None, :], other=0.0)                        # (BLOCK_L, T_PAD)
        if INVERT_FIRST:
            t = tl.where(offs_t[None, :] == 0, 1.0 - a, a)
        else:
            t = a
        sg = _sigmoid_of(t, mn1[None, :], inv1[None, :], own_quant[None, :], d)
        mask = _mask_of(sg, mn2[None, :], inv2[None, :], s, clamp_max)
        if INVERT_FIRST:
            mask = tl.where(offs_t[None, :] == 0, first_max - mask, mask)
        mask = tl.where(tok_ok[None, :], mask, 0.0)
        if MAP_ADAIN:
            # w·M + (1 − w)·AdaIN(M → statistics of A), statistics over the T tokens (unbiased σ)
            mean_m = tl.sum(mask, axis=1) / T                                               # (BLOCK_L,)
            cen_m = tl.where(tok_ok[None, :], mask - mean_m[:, None], 0.0)
            std_m = tl.sqrt(tl.sum(cen_m * cen_m, axis=1) / (T - 1))
            mean_a = tl.sum(a, axis=1) / T
            cen_a = tl.where(tok_ok[None, :], a - mean_a[:, None], 0.0)
            std_a = tl.sqrt(tl.sum(cen_a * cen_a, axis=1) / (T - 1))
            gain = std_a / (std_m + eps)
            ok = _is_finite(gain) & _is_finite(mean_a)
            blended = (mask * w + wc * mean_a[:, None]) + cen_m * (gain * wc)[:, None]
            mask = tl.where(ok[:, None] & tok_ok[None, :], blended, mask)
        v = _load_values(v_ptr + b * sv_b + h * sv_h, offs_t, offs_d, sv_t, sv_d, T, D)    # (T_PAD, D_PAD)
        out = _times_values(mask, v, NATIVE, PARTS)                                        # (BLOCK_L, D_PAD)
        if OUT_ADAIN:
            out = _output_adain(out, a, v, offs_d, D, w, wc, eps, NATIVE, PARTS)
        _store_out(out_ptr + b * so_b + h * so_h, out, offs_l, offs_d, so_l, so_d, L, D)
