"""Forge-family samplers with their own ways: CFG++ (Forge Neo 2.26's *Euler CFG++*, *Euler a
CFG++*, *DPM++ 2M CFG++*) and the timestep samplers (DDIM, PLMS: one step fewer than `steps`).

A CFG++ sampler adds a post-CFG function to the call's model_options that keeps the uncond
prediction, and renoises with it instead of the guided one (Neo `k_diffusion/sampling.py`
L656-702). FastFace's choice: the denoised it steps with is DCG's combination, the uncond it
renoises with is the real one (negative text, no face), so the uncond rows are evaluated on every
step, and the infotext says so. The stand-in sampler below is Neo's Euler CFG++ for an ε-model
(α_s = σ·e^(−log σ) = 1, σ_down = σ_next at η = 0).
"""
import pytest
import torch

from fastface.hosts import forge
from fastface.hosts.common import CFG_PP_NOTE
from fastface.hosts.forge import dcg as forge_dcg
from fastface.method.schedule import branches_needed
from fastface.presets import PRESETS

import forge_standins as fs
from test_host_forge import (SIGMAS, Run, float64_standins, forge_env, initial_x,  # noqa: F401  (fixtures)
                             reference_calls)

REALISTIC = PRESETS["Realistic"]


def sample_euler_cfg_pp(run: Run, seen_unconds: list):
    """Neo's `sample_euler_cfg_pp` (L656-702 at η = 0) over the stand-in denoiser: its nested
    `post_cfg_function` (the qualname Neo's has) is installed in the UNet's model_options the way
    `set_model_options_post_cfg_function` joins it into the call's options."""
    uncond_denoised = None

    def post_cfg_function(args):
        nonlocal uncond_denoised
        uncond_denoised = args["uncond_denoised"]
        seen_unconds.append(uncond_denoised)
        return args["denoised"]

    post_cfg_function.__qualname__ = "sample_euler_ancestral_cfg_pp.<locals>.post_cfg_function"
    unet = run.p.sd_model.forge_objects.unet
    unet.set_model_sampler_post_cfg_function(post_cfg_function, disable_cfg1_optimization=True)
    den = run.sampler.model_wrap_cfg
    sigmas = torch.tensor(SIGMAS[run.steps])
    x = initial_x(run.batch)
    den.steps = den.total_steps = run.steps
    with torch.no_grad():
        for i in range(run.steps):
            denoised = den(x, sigmas[i] * x.new_ones(x.shape[0]), run.p.c, run.p.uc, run.cfg)
            run.sampler.callback_state({"i": i, "x": x, "denoised": denoised})
            if sigmas[i + 1] == 0:
                x = denoised
            else:
                x = denoised + sigmas[i + 1] * (x - uncond_denoised) / sigmas[i]
    return x



@pytest.mark.parametrize("cfg", [1.0, 2.5])
@pytest.mark.parametrize("batch", [1, 2])
def test_cfg_pp_steps_with_dcg_and_renoises_with_the_real_uncond(forge_env, cfg, batch):
    run = Run(REALISTIC, cfg=cfg, batch=batch).start()
    seen = []
    got = sample_euler_cfg_pp(run, seen)
    calls = dict(run.job.calls)
    rows = [c["rows"] for c in run.model.calls]
    expected = reference_calls(run, REALISTIC, uncond_kept=True, cfg_pp=True)
    run.end()
    assert run.job.failed is None
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-5)   # the face branch computes in fp32
    assert len(seen) == 4 and all(u is not None for u in seen)
    # uncond + id-only + full on every step, in one UNet call per step
    assert rows == [3 * batch] * 4 and all(calls[(0, k)] == 1 for k in range(4))
    assert CFG_PP_NOTE in run.job.notes


def test_a_post_cfg_function_that_is_not_cfg_pp_gets_no_cfg_pp_note(forge_env):
    def post_cfg(args):   # e.g. SAG: reads the uncond, but is no CFG++ sampler
        return args["denoised"]

    run = Run(REALISTIC, post_cfg=post_cfg).start()
    run.sample()
    run.end()
    assert run.job.failed is None and CFG_PP_NOTE not in run.job.notes


def test_cfg_pp_function_is_recognised_by_the_samplers_nested_name():
    def post_cfg_function(args):
        return args["denoised"]

    assert forge_dcg.cfg_pp_function({}) is None
    assert forge_dcg.cfg_pp_function({"sampler_post_cfg_function": [post_cfg_function]}) is None
    for sampler in ("sample_euler_ancestral_cfg_pp", "sample_dpmpp_2m_cfg_pp", "res_multistep"):
        post_cfg_function.__qualname__ = f"{sampler}.<locals>.post_cfg_function"
        found = forge_dcg.cfg_pp_function({"sampler_post_cfg_function": [post_cfg_function]})
        assert (found is post_cfg_function) == ("cfg_pp" in sampler)


# -- timestep samplers (DDIM, PLMS): len(timesteps) − 1 steps ----------------------------------------
@pytest.mark.parametrize("steps", [2, 4, 8])
def test_timestep_sampler_schedule_ends_on_its_last_real_step(forge_env, steps):
    """Forge's DDIM runs steps − 1 model steps while its denoiser says `steps`: DCG's schedule
    follows the steps really run, so the last one is unboosted (2 rows: id-only + full), as on A1111."""
    run = Run(REALISTIC, steps=steps, batch=2)
    run.sampler = run.p.sampler = fs.TimestepSampler(run.p, [forge.on_cfg_denoiser])
    run.start()
    with torch.no_grad():
        run.sampler.sample_timesteps(initial_x(2), steps, run.p.c, run.p.uc, run.cfg)
    run.end()
    real = steps - 1
    expected = [2 * branches_needed(k, real, REALISTIC).rows_per_image for k in range(real)]
    assert [run.job.rows[(0, k)] for k in range(real)] == expected, dict(run.job.rows)
    assert run.job.failed is None
    assert run.sampler.func is fs.ddim   # the wrapper is gone with the job


def test_ddim_cfg_pp_denoiser_keeps_the_real_uncond_on_every_step(forge_env):
    """Forge's DDIM CFG++ sets `need_last_noise_uncond` on the CFG denoiser and renoises with
    (x − uncond_pred)/σ (sd_samplers_cfg_denoiser.py L201-202): the uncond rows are evaluated on
    every step, never dropped, and the note says so."""
    run = Run(REALISTIC, batch=2)
    run.sampler.model_wrap_cfg.need_last_noise_uncond = True
    run.start()
    run.sample()
    rows = [c["rows"] for c in run.model.calls]
    run.end()
    assert run.job.failed is None and CFG_PP_NOTE in run.job.notes
    assert rows == [3 * 2] * 4
