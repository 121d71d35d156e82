"""Triton kernels of the fused face branch (see fastface/fused_face.py for the host side and the math).

Imported lazily by `fused_face` and only when Triton is importable; without Triton this module imports
but defines no kernels (`KERNELS_DEFINED` is False). Triton decides at decoration time whether a kernel
runs compiled or in its CPU interpreter (TRITON_INTERPRET=1), so `INTERPRETED` records which mode the
kernels below were built in; `fused_face` reloads this module when the mode asked for differs.

Shapes (per call):
    q            (B, H, L, D)   any strides, fp16 / bf16 / fp32
    k, v         (B, H, T, D)   any strides, the dtype of q
    out          (B, H, L, D)   contiguous, the dtype of q
    probs        (B·H, T, L)    fp32 scratch, token-major: softmax probabilities (softmask path only)
    stats        (3, B·H, T)    fp32: per (row·head, token) min over L, max over L, quantile over L
Blocks: BLOCK_L query rows per program; T_PAD ≥ 16 and D_PAD ≥ 16 are powers of two (tl.dot needs
16), the padding masked. Everything is computed in fp32.
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
    def _face_probs(q_row, k_row, offs_l, offs_t, offs_d, sq_l, sq_d, sk_t, sk_d, L, T, D, scale):
        """softmax(q·kᵀ·scale) over the T face tokens for one block of queries → (BLOCK_L, T_PAD) fp32;
        padded tokens are exactly 0 (exp(−inf)), padded query rows hold a harmless uniform row."""
        q = tl.load(q_row + offs_l[:, None] * sq_l + offs_d[None, :] * sq_d,
                    mask=(offs_l[:, None] < L) & (offs_d[None, :] < D), other=0.0)       # (BLOCK_L, D_PAD)
        k = tl.load(k_row + offs_t[:, None] * sk_t + offs_d[None, :] * sk_d,
                    mask=(offs_t[:, None] < T) & (offs_d[None, :] < D), other=0.0)       # (T_PAD, D_PAD)
        # fp32 products (exact for fp16 / bf16 inputs) and fp32 sums, no TF32: q.float() @ k.float()ᵀ as on
        # the torch path (the face branch is tiny, so the FMA path costs nothing next to the launch)
        scores = tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32)), input_precision="ieee")
        scores = scores * scale                                                            # (BLOCK_L, T_PAD)
        scores = tl.where(offs_t[None, :] < T, scores, float("-inf"))
        row_max = tl.max(scores, axis=1)
        e = tl.exp(scores - row_max[:, None])
        return e / tl.sum(e, axis=1)[:, None]

    @triton.jit
    def _load_values(v_row, offs_t, offs_d, sv_t, sv_d, T, D):
        return tl.load(v_row + offs_t[:, None] * sv_t + offs_d[None, :] * sv_d,
                       mask=(offs_t[:, None] < T) & (offs_d[None, :] < D), other=0.0).to(tl.float32)

    @triton.jit
    def _output_adain(out, a_new, a_orig, v, offs_d, D, w, wc, eps):
        """`attention._output_adain` for one block: out (BLOCK_L, D_PAD) = a_new·v, blended towards the
        statistics over d of a_orig·v without forming it. Each output row is a mix of the T value rows,
        so its mean over d is a·m and its (unbiased) variance a·C·aᵀ, with m (T) the value rows' means and
        C (T, T) their covariance over d. The finite guard is per query row (the torch path checks the
        whole call at once; both leave the rows alone when the statistics are not finite)."""
        mean_v = tl.sum(v, axis=1) / D                                                     # (T_PAD,)
        centered = tl.where(offs_d[None, :] < D, v - mean_v[:, None], 0.0)                # (T_PAD, D_PAD)
        cov = tl.dot(centered, tl.trans(centered), input_precision="ieee") / (D - 1)      # (T_PAD, T_PAD)
        mean_x = tl.sum(a_new * mean_v[None, :], axis=1)                                   # (BLOCK_L,)
        var_x = tl.sum(tl.dot(a_new, cov, input_precision="ieee") * a_new, axis=1)
        mean_r = tl.sum(a_orig * mean_v[None, :], axis=1)
        var_r = tl.sum(tl.dot(a_orig, cov, input_precision="ieee") * a_orig, axis=1)
        std_x = tl.sqrt(tl.maximum(var_x, 0.0))
        std_r = tl.sqrt(tl.maximum(var_r, 0.0))
        gain = std_r / (std_x + eps)
        scale = w + wc * gain
        shift = wc * (mean_r - mean_x * gain)
        ok = _is_finite(scale) & _is_finite(shift)
        return tl.where(ok[:, None], shift[:, None] + out * scale[:, None], out)

    @triton.jit
    def _store_out(out_row, out, offs_l, offs_d, so_l, so_d, L, D):
        tl.store(out_row + offs_l[:, None] * so_l + offs_d[None, :] * so_d,
                 out.to(out_row.dtype.element_ty), mask=(offs_l[:, None] < L) & (offs_d[None, :] < D))

    # ---- kernel 1 of 1 (no transform, scale-power): softmax → [scale-power] → ·v → [output AdaIN] ----
    @triton.jit
    def direct_kernel(q_ptr, k_ptr, v_ptr, out_ptr,
                      sq_b, sq_h, sq_l, sq_d, sk_b, sk_h, sk_t, sk_d, sv_b, sv_h, sv_t, sv_d,
                      so_b, so_h, so_l, so_d,
                      H, L, T, D, scale, s, p, zero_pow, clamp_max, w, wc, eps,
                      SCALE_POWER: tl.constexpr, OUT_ADAIN: tl.constexpr,
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
                        sq_l, sq_d, sk_t, sk_d, L, T, D, scale)                    # (BLOCK_L, T_PAD)
        v = _load_values(v_ptr + b * sv_b + h * sv_h, offs_t, offs_d, sv_t, sv_d, T, D)    # (T_PAD, D_PAD)
        if SCALE_POWER:
            base = tl.maximum(a, 0.0)
            # aᵖ = 2^(p·log2 a) for a > 0; 0ᵖ (1 for p = 0, 0 for p > 0, inf for p < 0) comes from the host
            powered = tl.where(base > 0.0, tl.exp2(p * tl.log2(base)), zero_pow)
            a_new = tl.minimum(powered * s, clamp_max)
            a_new = tl.where(offs_t[None, :] < T, a_new, 0.0)
        else:
            a_new = a
        out = tl.dot(a_new, v, input_precision="ieee")                                    # (BLOCK_L, D_PAD)
        if OUT_ADAIN:
            out = _output_adain(out, a_new, a, v, offs_d, D, w, wc, eps)
        _store_out(out_ptr + b * so_b + h * so_h, out, offs_l, offs_d, so_l, so_d, L, D)

    # ---- softmask kernel 1 of 3: the probabilities, token-major, into a scratch buffer ----------------
    @triton.jit
    def probs_kernel(q_ptr, k_ptr, probs_ptr,
                     sq_b, sq_h, sq_l, sq_d, sk_b, sk_h, sk_t, sk_d,
                     H, L, T, D, scale,
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
                        sq_l, sq_d, sk_t, sk_d, L, T, D, scale)
        dst = probs_ptr + rh * T * L + offs_t[None, :] * L + offs_l[:, None]
        tl.store(dst, a, mask=(offs_l[:, None] < L) & (offs_t[None, :] < T))

    @triton.jit
    def _order_key(x):
        """fp32 → int32 with the same order (negative floats have their magnitude bits flipped)."""
        bits = x.to(tl.int32, bitcast=True)
        return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)

    # ---- softmask kernel 2 of 3: per (row·head, token) min, max and quantile over L ----------------
    @triton.jit
    def token_stats_kernel(probs_ptr, stats_ptr, RH, L, T, k_lo, k_hi, frac, floor,
                           INVERT_FIRST: tl.constexpr, BLOCK: tl.constexpr, ONE_CHUNK: tl.constexpr):
        """grid (T, B·H). For t = probs[rh, j, :] (token 0 inverted when INVERT_FIRST):
        stats[0] = min t, stats[1] = max t, stats[2] = max(quantile, floor) where the quantile is
        torch's linear one: x₍k_lo₎ + (x₍k_hi₎ − x₍k_lo₎)·frac over the sorted t.

        The order statistics come from a bisection on the values' bit patterns (32 steps, each
        counting the elements ≤ the midpoint): exact values, no sort, any L. With ONE_CHUNK the row
        stays in registers (L ≤ BLOCK); otherwise every step streams the row in BLOCK-sized chunks."""
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
            for start in range(0, L, BLOCK):
                valid = start + offs < L
                x = tl.load(row + start + offs, mask=valid, other=0.0)
                x = tl.where(flip, 1.0 - x, x)
                mn = tl.minimum(mn, tl.min(tl.where(valid, x, float("inf")), axis=0))
                mx = tl.maximum(mx, tl.max(tl.where(valid, x, float("-inf")), axis=0))
        # smallest key with at least k_lo + 1 elements ≤ it is the key of x₍k_lo₎
        lo = _order_key(mn).to(tl.int64)
        hi = _order_key(mx).to(tl.int64)
        for _ in range(32):
            mid = lo + (hi - lo) // 2
            if ONE_CHUNK:
                count = tl.sum((valid & (key <= mid)).to(tl.int32), axis=0)
            else:
                count = 0
                for start in range(0, L, BLOCK):
                    valid = start + offs < L
                    x = tl.load(row + start + offs, mask=valid, other=0.0)
                    x = tl.where(flip, 1.0 - x, x)
                    bits = x.to(tl.int32, bitcast=True)
                    key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
                    count += tl.sum((valid & (key <= mid)).to(tl.int32), axis=0)
            enough = count >= k_lo + 1
            hi = tl.where(enough, mid, hi)
            lo = tl.where(enough, lo, mid + 1)
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
            for start in range(0, L, BLOCK):
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
    @triton.jit
    def softmask_kernel(probs_ptr, stats_ptr, v_ptr, out_ptr,
                        sv_b, sv_h, sv_t, sv_d, so_b, so_h, so_l, so_d,
                        R, H, L, T, D, P, d, s, clamp_max, w, wc, eps,
                        INVERT_FIRST: tl.constexpr, MAP_ADAIN: tl.constexpr, OUT_ADAIN: tl.constexpr,
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
        out = tl.dot(mask, v, input_precision="ieee")                                      # (BLOCK_L, D_PAD)
        if OUT_ADAIN:
            out = _output_adain(out, mask, a, v, offs_d, D, w, wc, eps)
        _store_out(out_ptr + b * so_b + h * so_h, out, offs_l, offs_d, so_l, so_d, L, D)
