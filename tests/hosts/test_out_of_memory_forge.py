"""Out of memory inside a job on Forge 2 (stand-ins, tests/forge_standins.py): FastFace's own memory
(the face branch, the preview, the UNet call carrying DCG's id-only rows) turns FastFace off with a
memory note and the step is Forge's own (its own UNet patcher, not FastFace's clone); Forge's own
out-of-memory error goes through; nothing is left for the next job."""
import pytest
import torch

import forge_standins as fs
from fastface.hosts import forge, recording
from fastface.hosts.common import IN_EXTRA_ROWS, IN_FACE_BRANCH, IN_PREVIEW, PatchSet
from fastface.hosts.forge import attention as forge_attention
from fastface.presets import PRESETS
from fastface.views.attnmaps import AttentionRecorder

from test_host_forge import Run, float64_standins, forge_env  # noqa: F401  (fixtures)
from test_out_of_memory_a1111 import MEMORY_WORDS, OOM, faults  # noqa: F401  (fixture)

REALISTIC = PRESETS["Realistic"]            # DCG + scale-power: 2, 3, 3, 2 rows per image at CFG > 1
SCALE_POWER = PRESETS["Scale-power only"]   # the face branch without DCG
CFG = 2.5


def start(run):
    """What the script does before sampling: the recording (with "Show face attention"), the pass."""
    recording.begin(run.job)
    run.start()
    forge.start_recording_pass(run.job, run.p)
    return run


def fresh_results():
    """A FastFace job (batch 1 and 2, with the preview) and FastFace off, as a new server gives them."""
    def on(args, batch=1):
        run = start(Run(args, cfg=CFG, batch=batch))
        x = run.sample()
        run.end()
        return x
    return {"on": on(REALISTIC), "batch": on(REALISTIC, 2), "preview": on(REALISTIC.replace(show_attention=True)),
            "am": on(SCALE_POWER), "off": Run(REALISTIC, cfg=CFG, fastface=False).sample()}


_FIRST: dict = {}


def first_results():
    """`fresh_results` of the first test that asks (the stand-ins are seeded: every test's are the same)."""
    if not _FIRST:
        _FIRST.update(fresh_results())
    return dict(_FIRST)


def assert_nothing_left(before):
    assert not PatchSet.live
    after = fresh_results()
    for key, value in before.items():   # bit for bit: as if the error had not happened
        assert torch.equal(after[key], value), key


def spy_on_denoiser(run):
    """The denoiser's inputs per call and (x, σ, result) per call that returned, seen under
    FastFace's guard (installed on top of the spy at the pass's start)."""
    den = run.sampler.model_wrap_cfg
    original, calls, results = den.forward, [], []

    def spy(x, sigma, *rest):
        calls.append(x.clone())
        out = original(x, sigma, *rest)
        results.append((x.clone(), sigma.clone(), out))
        return out
    den.forward = spy
    return calls, results


@pytest.mark.parametrize("batch", [1, 2])
def test_oom_in_the_unet_call_with_dcg_rows_gives_forges_step(forge_env, faults, batch):
    before = first_results()
    run = Run(REALISTIC, cfg=CFG, batch=batch)
    calls, results = spy_on_denoiser(run)
    seen = faults.raise_on(run.model.diffusion_model, "forward", lambda n, x, *a, **k: x.shape[0] == 3 * batch)
    start(run)
    run.sample()
    run.end()
    assert seen["raised"] == 1
    # step 0: uncond + cond; step 1: + the id-only rows, which ran out of memory; then Forge's own
    assert [c["rows"] for c in run.model.calls] == [2 * batch, 3 * batch] + [2 * batch] * 3
    note = run.job.infotext_params().get("FastFace note", "")
    assert MEMORY_WORDS + " the UNet call that carries DCG's extra rows" in note and "a preset without DCG" in note
    assert "internal error" not in note
    assert run.job.out_of_memory == IN_EXTRA_ROWS and not run.job.active
    # step 1 was called twice (the attempt that ran out of memory, then Forge's own), and from
    # there on each result is Forge's own for its input
    assert len(calls) == 5 and len(results) == 4 and torch.equal(calls[1], calls[2])
    host = Run(REALISTIC, cfg=CFG, batch=batch, fastface=False)
    host_den = host.sampler.model_wrap_cfg
    host_den.steps = host_den.total_steps = 4
    with torch.no_grad():
        for x, sigma, got in results[1:]:
            assert torch.equal(got, host_den(x, sigma, host.p.c, host.p.uc, CFG))
    faults.clear()
    assert_nothing_left(before)


@pytest.mark.parametrize("args", [REALISTIC, SCALE_POWER, REALISTIC.replace(show_attention=True)],
                         ids=["dcg+am", "am-only", "with-preview"])
def test_oom_in_the_face_branch_gives_forges_step(forge_env, faults, args):
    """The second face-branch call is in the same UNet call as the first (step 0, down then up):
    the step is Forge's own, not half transformed, and so is every later one."""
    before = first_results()
    if args.show_attention:
        seen = faults.raise_on(AttentionRecorder, "add", lambda n, *a, **k: n == 2)
    else:
        seen = faults.raise_on(forge_attention, "ip_attention", lambda n, *a, **k: n == 2)
    run = start(Run(args, cfg=CFG))
    x = run.sample()
    run.end()
    assert seen["raised"] == 1
    assert torch.equal(x, before["off"])   # step 0 on: Forge's own trajectory, bit for bit
    # with the preview, the second map recorded is the mid layer's, left to Forge's own code
    place = IN_PREVIEW if args.show_attention else IN_FACE_BRANCH
    note = run.job.infotext_params().get("FastFace note", "")
    assert f"{MEMORY_WORDS} {place} and turned itself off" in note and "internal error" not in note
    assert ("a preset without DCG" in note) == args.dcg
    # what it held is dropped
    assert run.job.out_of_memory == place and run.job.recording is None and run.job._transforms is None
    faults.clear()
    assert_nothing_left(before)


@pytest.mark.parametrize("args", [REALISTIC, SCALE_POWER], ids=["dcg-step-without-extra-rows", "am-only"])
def test_forges_own_oom_goes_through_and_leaves_nothing(forge_env, faults, args):
    before = first_results()
    run = Run(args, cfg=CFG)
    seen = faults.raise_on(run.model.diffusion_model, "forward", lambda n, *a, **k: n == 1)
    start(run)
    with pytest.raises(OOM):
        run.sample()
    assert seen["raised"] == 1
    assert not PatchSet.live   # undone at once, not only at the next job's start
    assert run.p.sd_model.forge_objects.unet is run.controlnet_unet   # Forge's own patcher again
    faults.clear()
    assert_nothing_left(before)
