"""A1111: the state of one sampling pass, and the sampler step of each model call."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..common import StepTracker


@dataclass
class PassState(StepTracker):
    """One sampling pass (txt2img, img2img or hires) of one job."""

    index: int = 0
    is_hires: bool = False
    face: bool = False               # a FaceID or PuLID unit is active in sd-webui-controlnet
    eps_output: bool = False         # the denoiser returns ε (timestep samplers), else x₀
    images: int = 1                  # images per batch (rows of one branch), ≥ 1
    # set per model call by on_cfg_denoiser, read by the combination
    layout: Optional[str] = None     # None (DCG not applied), "plain", "extra_id", "id_in_uncond"
    batch: int = 0
    alpha: float = 1.0
    beta: float = 1.0
    phi: float = 0.0
    uncond_skipped: bool = False
    uncond_marked: Optional[bool] = None   # sd-webui-controlnet marked the negative rows (read once)
    x: Optional[torch.Tensor] = None
    sigma: Optional[torch.Tensor] = None
    warned: set = field(default_factory=set)


def sampler_step(st: PassState, den: Any) -> tuple[int, int]:
    """(step, total) for the model call that is about to run (see `StepTracker`)."""
    return st.on_model_call(getattr(den, "steps", None), getattr(den, "total_steps", None))

