"""Forge at CFG 1: the negative prompt, which Forge does not encode there, encoded by FastFace for DCG."""
from __future__ import annotations

from .state import ForgePass


def encode_negative(p, hires: bool):
    """The pass's negative prompts encoded the way `setup_conds` would have done at CFG ≠ 1
    (processing.py L490-505 / L1576-1590): prompt schedules for `reconstruct_cond_batch`."""
    from modules import prompt_parser  # host import, inside the WebUI only

    prompts = list(getattr(p, "hr_negative_prompts" if hires else "negative_prompts", None) or [])
    if not prompts:
        prompts = [""] * len(getattr(p, "hr_prompts" if hires else "prompts", None) or [""])
    width = getattr(p, "hr_upscale_to_x", None) if hires else getattr(p, "width", None)
    height = getattr(p, "hr_upscale_to_y", None) if hires else getattr(p, "height", None)
    kwargs = dict(width=width, height=height, is_negative_prompt=True)
    distilled = getattr(p, "hr_distilled_cfg" if hires else "distilled_cfg_scale", None)
    try:
        prompts = prompt_parser.SdConditioning(prompts, distilled_cfg_scale=distilled, **kwargs)
    except TypeError:  # Gen1 / A1111-style signature
        prompts = prompt_parser.SdConditioning(prompts, **kwargs)
    steps = int(getattr(p, "firstpass_steps", None) or getattr(p, "steps", 1) or 1)
    hires_steps = None
    if hires:
        hires_steps = int(getattr(p, "hr_second_pass_steps", 0) or getattr(p, "steps", 1)) \
            * max(int(getattr(p, "step_multiplier", 1) or 1), 1)
    network_data = getattr(p, "hr_extra_network_data" if hires else "extra_network_data", None)
    with_cache = getattr(p, "get_conds_with_caching", None)
    if callable(with_cache):
        try:
            return with_cache(prompt_parser.get_learned_conditioning, prompts, steps, [[None, None, None]],
                              network_data, hires_steps)
        except TypeError:
            pass
    return prompt_parser.get_learned_conditioning(p.sd_model, prompts, steps, hires_steps)


def negative_at(st: ForgePass, denoiser):
    from modules import prompt_parser

    return prompt_parser.reconstruct_cond_batch(st.negative, int(getattr(denoiser, "step", 0) or 0))

