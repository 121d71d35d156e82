"""fastface.hosts.forge on reForge (Panchovix/stable-diffusion-webui-reForge main 3b56b268) and the
unit weight on every Forge flavour, against the stand-ins of tests/forge_standins.py.

reForge's sampling is ComfyUI-style: `sampler_calc_cond_batch_function` runs *instead of* the
evaluation, the `sampler_pre_cfg_function`s get an args dict *after* it. FastFace plans its id-only
rows in the former, so a step is one UNet call with the rows Forge 2 has (README table); where no
hook runs before the evaluation it says so and takes a separate call.
"""
import sys
import types
from dataclasses import replace

import pytest
import torch

from fastface.hosts.forge import attention as forge_attention, internals as forge_internals
from fastface.presets import PRESETS

import forge_standins as fs
from test_host_forge import (Run, _attention_inputs, _job, assert_one_call_per_step_with_the_documented_rows,  # noqa: F401
                             float64_standins, forge_env, initial_x, reference_calls, sample_one_job)   # (fixtures)

REALISTIC, STYLISTIC = PRESETS["Realistic"], PRESETS["Stylistic"]
REFORGE = dict(patcher=fs.ReforgeUnetPatcher, patch_class=fs.ReforgeCrossAttentionPatch)


@pytest.fixture
def reforge_env(forge_env, monkeypatch):
    """reForge's `ldm_patched.modules.samplers` (calc_cond_batch + its calc_cond_uncond_batch
    wrapper) and no Forge 2 backend."""
    samplers = types.ModuleType("ldm_patched.modules.samplers")
    samplers.calc_cond_batch = fs.calc_cond_batch
    samplers.calc_cond_uncond_batch = fs.reforge_calc_cond_uncond_batch
    ldm = types.ModuleType("ldm_patched")
    ldm_modules = types.ModuleType("ldm_patched.modules")
    ldm.modules, ldm_modules.samplers = ldm_modules, samplers
    monkeypatch.setitem(sys.modules, "backend.sampling.sampling_function", None)   # import fails
    for name, module in (("ldm_patched", ldm), ("ldm_patched.modules", ldm_modules), ("ldm_patched.modules.samplers", samplers)):
        monkeypatch.setitem(sys.modules, name, module)
    yield forge_env


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("steps", [1, 2, 4, 8])
@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_reforge_one_unet_call_per_step_with_forge_2s_rows(reforge_env, preset, steps, cfg):
    run = sample_one_job(PRESETS[preset], steps, cfg, batch=2, **REFORGE)
    assert run.job.failed is None and not run.job.notes
    assert_one_call_per_step_with_the_documented_rows(run, PRESETS[preset], steps, cfg, batch=2)


def test_reforge_realistic_4_steps_rows_2_3_3_2(reforge_env):
    """The README's numbers for a 4-step Realistic image (batch 1) at CFG 1 and 2.5."""
    for cfg in (1.0, 2.5):
        run = Run(REALISTIC, steps=4, cfg=cfg, **REFORGE).start()
        run.sample()
        run.end()
        assert [run.job.rows[(0, k)] for k in range(4)] == [2, 3, 3, 2]
        assert [run.job.calls[(0, k)] for k in range(4)] == [1, 1, 1, 1]


@pytest.mark.parametrize("preset", ["Stylistic", "Realistic"])
@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("cfg, batch", [(1.0, 1), (2.5, 2)])
def test_reforge_batched_dcg_equals_three_separate_calls(reforge_env, preset, steps, cfg, batch):
    args = PRESETS[preset]
    run = Run(args, steps=steps, cfg=cfg, batch=batch, **REFORGE).start()
    got = run.sample()
    expected = reference_calls(run, args)
    run.end()
    assert run.job.failed is None and not run.job.notes
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-5)
    stock = Run(args, steps=steps, cfg=cfg, batch=batch, fastface=False, **REFORGE).sample()
    assert not torch.allclose(got, stock, atol=1e-3)   # the comparison can fail


def test_reforge_keeps_the_uncond_rows_for_another_pre_cfg_function(reforge_env):
    """reForge's pre-CFG functions read the outputs after the evaluation: FastFace does not drop
    the uncond rows they may read, and passes the outputs on untouched."""
    seen = []

    def other_pre_cfg(args):
        seen.append(args["conds_out"][1])
        return args["conds_out"]

    run = Run(REALISTIC, cfg=2.5, **REFORGE)
    run.controlnet_unet.add_sampler_pre_cfg_function(other_pre_cfg)
    got = run.start().sample()
    rows = [c["rows"] for c in run.model.calls]   # before the reference adds its own calls
    expected = reference_calls(run, REALISTIC, uncond_kept=True)
    run.end()
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-5)
    assert len(seen) == 4 and all(isinstance(u, torch.Tensor) and u.abs().sum() > 0 for u in seen)
    assert rows == [3] * 4


def test_reforge_chains_another_calc_cond_batch_function(reforge_env):
    calls = []

    def other(args):   # e.g. reForge's skip-layer guidance node (ldm_patched/contrib/nodes_slg.py L145)
        calls.append([c is not None for c in args["conds"]])
        return fs.calc_cond_batch(args["model"], args["conds"], args["input"], args["sigma"], args["model_options"])

    run = Run(REALISTIC, cfg=2.5, **REFORGE)
    run.controlnet_unet.set_model_sampler_calc_cond_batch_function(other)
    got = run.start().sample()
    rows = [c["rows"] for c in run.model.calls]   # before the reference adds its own calls
    expected = reference_calls(run, REALISTIC)
    run.end()
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-5)
    # the other function ran on every call, with the negative entries (steps 0 and 3: as the
    # id-only rows, relabelled inside the UNet call)
    assert calls == [[True, True]] * 4
    assert rows == [2, 3, 3, 2]


def test_without_a_hook_before_the_evaluation_the_separate_call_is_noted(reforge_env):
    """A host whose only hook is the after-evaluation pre-CFG list (reForge as FastFace met it
    before issue 14): the values stay right, the extra UNet call is said, not silent."""
    run = Run(STYLISTIC, cfg=2.5, patcher=fs.ReforgeWithoutCalcSeam, patch_class=fs.ReforgeCrossAttentionPatch).start()
    got = run.sample()
    calls = dict(run.job.calls)
    expected = reference_calls(run, STYLISTIC, uncond_kept=True)
    run.end()
    assert run.job.failed is None
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-5)
    assert all(calls[(0, k)] == 2 for k in range(4))
    assert "this Forge called none of FastFace's hooks before its UNet call: one more UNet call per step" in run.job.notes


def test_calc_cond_uncond_batch_made_from_calc_cond_batch(reforge_env, monkeypatch):
    del sys.modules["ldm_patched.modules.samplers"].calc_cond_uncond_batch
    made = forge_internals.calc_cond_uncond_batch()
    assert made is not None and made is not fs.reforge_calc_cond_uncond_batch
    run = Run(STYLISTIC, cfg=2.5, **REFORGE).start()
    assert torch.allclose(run.sample(), reference_calls(run, STYLISTIC), atol=1e-4, rtol=1e-5)


# -- the unit's weight as the host applies it, on every Forge flavour -------------------------------
FLAVOURS = {"Forge 2": fs.CrossAttentionPatch, "Forge Classic": fs.ClassicCrossAttentionPatch,
            "reForge": fs.ReforgeCrossAttentionPatch}
IDENTITY = replace(PRESETS["Scale-power only"], sp_s_down=1.0, sp_s_mid=1.0, sp_s_up=1.0, sp_p=1.0, am_mid=True)


@pytest.mark.parametrize("weight", [0.6, 1.0])
@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_identity_transform_equals_the_hosts_own_patch(flavour, weight):
    """Where FastFace takes over a layer, Scale-power with s = 1, p = 1 (an identity transform)
    gives exactly what the host's own patch gives at that unit weight (reForge: w², the others: w)."""
    q, k, v, options = _attention_inputs()
    g = torch.Generator().manual_seed(11)
    patch = FLAVOURS[flavour](weight, fs.Adapter(faceid=True), 0, torch.randn(1, 4, 8, generator=g),
                              torch.randn(1, 4, 8, generator=g), "original", None, 1e9, 0.0)
    job = _job(IDENTITY)
    wrapper = forge_attention.FaceAttn2Patch(patch, job)
    got = wrapper(q, k, v, options)
    assert job.failed is None and not job.notes
    assert sum(job.am_calls.values()) == 1          # FastFace's own layer ran, not the host's
    assert torch.allclose(got, patch(q, k, v, options), atol=1e-6, rtol=1e-6)
    half = FLAVOURS[flavour](weight / 2, fs.Adapter(faceid=True), 0, patch.conds[0], patch.unconds[0], "original",
                             None, 1e9, 0.0)
    assert not torch.allclose(got, half(q, k, v, options), atol=1e-3)   # the weight shows: the test can fail


def test_identity_transform_through_a_whole_reforge_generation(reforge_env):
    """The same at the level of a generation: Scale-power only with the identity transform on
    reForge at weight 0.6 gives the host's own image."""
    on = Run(IDENTITY, cfg=2.5, weight=0.6, **REFORGE).start()
    got = on.sample()
    on.end()
    off = Run(IDENTITY, cfg=2.5, weight=0.6, fastface=False, **REFORGE).sample()
    assert on.job.failed is None and sum(on.job.am_calls.values()) > 0
    assert torch.allclose(got, off, atol=1e-3, rtol=1e-5)   # the face branch in fp32 (FastFace), float64 (host)


def test_a_patch_whose_weighting_cannot_be_measured_is_left_to_the_host():
    class Odd(fs.CrossAttentionPatch):
        @staticmethod
        def output_weighted(out_ip, weight):
            return out_ip * (weight + 0.3)      # neither w nor w²

    q, k, v, options = _attention_inputs()
    g = torch.Generator().manual_seed(11)
    patch = Odd(0.6, fs.Adapter(faceid=True), 0, torch.randn(1, 4, 8, generator=g), torch.randn(1, 4, 8, generator=g),
                "original", None, 1e9, 0.0)
    assert forge_internals.weight_power(patch) is None
    job = _job(REALISTIC)
    assert torch.equal(forge_attention.FaceAttn2Patch(patch, job)(q, k, v, options), patch(q, k, v, options))
    assert job.notes == ["attention transform skipped: an IP-Adapter whose unit weight FastFace could not measure "
                         "is not supported on Forge"]
    assert forge_internals.weight_power(fs.ReforgeCrossAttentionPatch(0.6, patch.ipadapters[0], 0, patch.conds[0],
                                                                      patch.unconds[0])) == 2
    assert forge_internals.weight_power(patch.__class__.__mro__[1](0.6, patch.ipadapters[0], 0, patch.conds[0],
                                                                   patch.unconds[0])) == 1
