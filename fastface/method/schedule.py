"""Per-step schedules: DCG weights (α, β), softmask (d, s), and which UNet branches a step needs.

`step` is the 0-based *sampler* step of the current pass and `total` its number of steps (the host
derives both from the sampler, never from a count of UNet calls). Worked cases, with the default
peaks α = 1.5, β = 3 and rescale on every step:

    steps  intermediate α / β                     reference α / β (authors' lists by index)
    1      [1]           / [1]                    [1]             / [1]
    2      [1, 1]        / [1, 1]                 [1, 1.5]        / [1, 3]   (last step boosted)
    3      [1, 1.5, 1]   / [1, 3, 1]              [1, 1.5, 1.5]   / [1, 3, 3]
    4      [1, 1.5, 1.5, 1] / [1, 3, 3, 1]        identical to intermediate
    8      [1, 1.5 ×6, 1] / [1, 3 ×6, 1]          [1, 1.5, 1.5, 1, 1, 1, 1, 1] / [1, 3, 3, 1, …]

Branches read per step (uncond, id-only, full) = (negative text, negative text + face,
prompt + face). With DCG on and the default "rescale on all steps", a step with α = β = 1 reads
id-only and full (the rescale needs σ_id) but not uncond; a boosted step reads all three. With
rescale only on boosted steps (or φ = 0), an unboosted step reads the full branch alone.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import FastFaceArgs

MAX_STEPS = 150


def _check_step(step: int, total: int) -> None:
    if not 1 <= total <= 10_000:
        raise ValueError(f"total steps must be ≥ 1, got {total}")
    if not 0 <= step < total:
        raise ValueError(f"step must be in [0, {total}), got {step}")


def _by_index(values: tuple[float, ...], step: int) -> float:
    """The authors' list lookup, but repeating the last entry instead of raising IndexError."""
    return float(values[min(step, len(values) - 1)])


def alpha_beta(step: int, total: int, args: FastFaceArgs) -> tuple[float, float]:
    """DCG weights (α, β) for this step. ε = u + α(ε_id − u) + β(ε_full − ε_id)."""
    _check_step(step, total)
    if args.schedule == "intermediate":
        boosted = 0 < step < total - 1
        return (args.alpha_peak, args.beta_peak) if boosted else (1.0, 1.0)
    if args.schedule == "reference":
        alphas = (1.0, args.alpha_peak, args.alpha_peak, 1.0)
        betas = (1.0, args.beta_peak, args.beta_peak, 1.0)
        return _by_index(alphas, step), _by_index(betas, step)
    if args.schedule == "custom":
        return _by_index(args.alpha_custom, step), _by_index(args.beta_custom, step)
    raise ValueError(f"unknown schedule {args.schedule!r}")


def is_boosted(step: int, total: int, args: FastFaceArgs) -> bool:
    return alpha_beta(step, total, args) != (1.0, 1.0)


def rescale_phi(step: int, total: int, args: FastFaceArgs) -> float:
    """φ to use on this step: 0 when the rescale is off for it."""
    if args.rescale_steps == "boosted" and not is_boosted(step, total, args):
        return 0.0
    return float(args.phi)


def softmask_params(step: int, total: int, args: FastFaceArgs) -> tuple[float, float]:
    """(d, s) of the scheduled softmask: the 'first' values on step 0, the 'later' ones after.

    The authors index a 4-entry list [first, later, later, later] and crash past 4 steps; this
    is the same list with the last entry repeated."""
    _check_step(step, total)
    if step == 0:
        return float(args.sm_d_first), float(args.sm_s_first)
    return float(args.sm_d_later), float(args.sm_s_later)


@dataclass(frozen=True)
class Branches:
    """Which of the three DCG branches a step evaluates."""

    uncond: bool
    id_only: bool
    full: bool

    @property
    def rows_per_image(self) -> int:
        return int(self.uncond) + int(self.id_only) + int(self.full)


def branches_needed(step: int, total: int, args: FastFaceArgs) -> Branches:
    """Branches that carry a non-zero weight in the combination or are read by the rescale.

    ε = (1 − α)·u + (α − β)·ε_id + β·ε_full, and the rescale reads std(ε_id) and std(ε_full).
    With FastFace or DCG off the host's own CFG is untouched: uncond + full."""
    if not (args.enabled and args.dcg):
        return Branches(uncond=True, id_only=False, full=True)
    alpha, beta = alpha_beta(step, total, args)
    rescale = rescale_phi(step, total, args) > 0.0
    return Branches(
        uncond=alpha != 1.0,
        id_only=alpha != beta or rescale,
        full=beta != 0.0 or rescale,
    )


def rows_per_image(total: int, args: FastFaceArgs) -> list[int]:
    """UNet rows per image for each step of a `total`-step pass (for the benchmark and tests)."""
    return [branches_needed(k, total, args).rows_per_image for k in range(total)]
