"""Forge: the state of one sampling pass, and the sampler step of each model call."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from ..common import StepTracker


@dataclass
class ForgePass(StepTracker):
    """One sampling pass (txt2img, img2img or hires) of one job on Forge."""

    index: int = 0
    is_hires: bool = False
    face: bool = False               # a FaceID IP-Adapter patch is installed in this pass's UNet
    negative: Any = None             # negative prompt schedules encoded by FastFace (CFG 1)
    calc: Optional[Callable] = None  # calc_cond_uncond_batch of this Forge
    prior_cfg: Optional[Callable] = None  # another extension's sampler_cfg_function, chained
    sampler: Any = None              # the sampler whose callback_state is patched
    batched: bool = False            # the id-only rows ride in Forge's own UNet call (wrapper installed)
    prior_wrapper: Optional[Callable] = None  # another extension's model_function_wrapper, chained
    prior_calc: Optional[Callable] = None  # another extension's sampler_calc_cond_batch_function, chained
    renoise_uncond: bool = False     # the denoiser keeps the uncond prediction for DDIM CFG++ (need_last_noise_uncond)
    planned: bool = False            # a FastFace hook before the evaluation ran for this model call
    plan: Optional[str] = None       # this model call's id-only plan (set before the evaluation, the cfg function clears it)
    uncond_ran: Optional[bool] = None  # the uncond slot holds a real negative prediction (None: no hook said)
    id_x0: Any = None                # the wrapper's result for the plan: appended rows' x0, or True
    window_sigmas: Any = None        # the σ tensor of the UNet call the windows below belong to
    windows: dict = field(default_factory=dict)   # (sigma_start, sigma_end) -> (1,) 0/1 factor


def sampler_step(st: ForgePass, den: Any) -> tuple[int, int]:
    """(step, total) of the model call about to run (see `StepTracker`)."""
    return st.on_model_call(getattr(den, "steps", None), getattr(den, "total_steps", None))

