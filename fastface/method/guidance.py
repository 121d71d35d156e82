"""Decoupled classifier-free guidance (the paper's DCG₂, the authors' `dcg_type == 3`).

    ε̂ = u + α(ε_id − u) + β(ε_full − ε_id)           weights (1 − α, α − β, β) sum to 1
    rescale: ε̂ ← ε̂ · (φ·(σ_id + σ_full) / (2σ̂) + (1 − φ))

σ is the unbiased standard deviation of one sample over all its non-batch dims (C, H, W together,
as `eps.std(dim=[1, 2, 3])` in the authors' `src/dcg.py`). Because the weights sum to one, the
linear part is the same in ε-space and x₀-space; the rescale is not, so `dcg_x0` converts to ε
(ε·σ = x − x₀), combines there and converts back.
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor


def _work_dtype(t: Tensor) -> torch.dtype:
    """fp32 at least (half inputs), fp64 kept (tests and careful callers)."""
    return torch.promote_types(t.dtype, torch.float32)


def _per_sample_std(t: Tensor) -> Tensor:
    """Unbiased std over every dim but the batch, shaped to broadcast against `t`.

    (Unbiased or not cancels in the rescale ratio; unbiased is what the authors' torch.std uses.)"""
    flat = t.reshape(t.shape[0], -1).to(_work_dtype(t))
    std = flat.std(dim=1, unbiased=True) if flat.shape[1] > 1 else torch.zeros(t.shape[0], device=t.device, dtype=flat.dtype)
    return std.reshape((t.shape[0],) + (1,) * (t.dim() - 1))


def rescale_factor(eps_id: Tensor, eps_full: Tensor, eps_guided: Tensor, phi: float) -> Tensor:
    """φ·(σ_id + σ_full)/(2σ̂) + (1 − φ), per sample; 1 where σ̂ = 0 (nothing to rescale)."""
    std_id, std_full, std_guided = (_per_sample_std(t) for t in (eps_id, eps_full, eps_guided))
    ratio = (std_id + std_full) / (2.0 * std_guided.clamp_min(torch.finfo(std_guided.dtype).tiny))
    ratio = torch.where(std_guided > 0, ratio, torch.ones_like(ratio))
    return phi * ratio + (1.0 - phi)


def dcg_eps(eps_uncond: Tensor, eps_id: Tensor, eps_full: Tensor,
            alpha: float, beta: float, phi: float) -> Tensor:
    """Combine the three ε predictions (each (B, C, H, W)); φ = 0 skips the rescale.

    Computed in fp32 and returned in the inputs' dtype. α = β = w is ordinary CFG with scale w
    (rescale aside); α = β = 1 returns ε_full."""
    dtype, work = eps_full.dtype, _work_dtype(eps_full)
    u, e_id, e_full = eps_uncond.to(work), eps_id.to(work), eps_full.to(work)
    guided = u + alpha * (e_id - u) + beta * (e_full - e_id)
    if phi != 0.0:
        guided = guided * rescale_factor(e_id, e_full, guided, phi)
    return guided.to(dtype)


def _sigma_like(sigma: Tensor | float, x: Tensor) -> Tensor:
    if isinstance(sigma, Tensor):
        sigma = sigma.to(device=x.device, dtype=_work_dtype(x))
    else:  # a Python number: filled on x's device (no host tensor copied over per step)
        sigma = torch.full((), float(sigma), device=x.device, dtype=_work_dtype(x))
    if sigma.dim() == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape((x.shape[0],) + (1,) * (x.dim() - 1))


def dcg_x0(x: Tensor, sigma: Tensor | float, x0_uncond: Tensor, x0_id: Tensor, x0_full: Tensor,
           alpha: float, beta: float, phi: float) -> Tensor:
    """`dcg_eps` for hosts that hand over denoised x₀ (k-diffusion, Forge): ε = (x − x₀)/σ.

    `sigma` is a scalar or one value per sample. A σ of 0 would make ε undefined; the combination
    is homogeneous in σ (the rescale is a ratio of stds), so such samples use σ = 1 instead."""
    s = _sigma_like(sigma, x)
    s = torch.where(s > 0, s, torch.ones_like(s))
    xf = x.to(s.dtype)
    eps = [(xf - x0.to(s.dtype)) / s for x0 in (x0_uncond, x0_id, x0_full)]
    guided = dcg_eps(*eps, alpha=alpha, beta=beta, phi=phi)
    return (xf - s * guided).to(x0_full.dtype)
