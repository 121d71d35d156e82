"""Out of memory inside a job on A1111 (stand-ins, tests/a1111_standins.py): FastFace's own memory
(the face branch, the preview, the UNet call carrying DCG's third row) turns FastFace off with a
memory note and the step is the host's own; the host's own out-of-memory error goes through;
nothing is left for the next job."""
from types import SimpleNamespace

import pytest
import torch

import a1111_standins as cn
from fastface.hosts import a1111, webui
from fastface.hosts.a1111 import attention as a1111_attention
from fastface.hosts.common import IN_EXTRA_ROWS, IN_FACE_BRANCH, IN_PREVIEW, NOTE_KEY, PatchSet
from fastface.hosts.common import OUT_OF_MEMORY
from fastface.presets import PRESETS
from fastface.views.attnmaps import AttentionRecorder

from test_host_a1111 import SIGMAS4, processing_for, text

OOM = OUT_OF_MEMORY[0]
REALISTIC = PRESETS["Realistic"]            # DCG + scale-power: rows per step [2, 3, 3, 2]
SCALE_POWER = PRESETS["Scale-power only"]   # the face branch without DCG
MEMORY_WORDS = "FastFace ran out of GPU memory in"
HOST_ATTN_EVAL = cn.PlugableIPAdapter.__dict__["attn_eval"]


@pytest.fixture
def host(monkeypatch):
    empty = torch.randn(1, 6, cn.C, generator=torch.Generator().manual_seed(99))
    shared, callbacks = cn.install_fake_webui_modules(monkeypatch, empty)
    callbacks.on_cfg_denoiser(a1111.on_cfg_denoiser)
    unet = cn.FakeUNet()
    adapter = cn.PlugableIPAdapter(is_faceid=True, seed=0)
    cn.hook_ip_adapter(unet, adapter)
    yield SimpleNamespace(shared=shared, callbacks=callbacks, unet=unet, adapter=adapter)
    PatchSet.undo_all()


def new_p(host):
    """A new job on the *same* UNet and IP-Adapter, as a server keeps them (ControlNet's hook
    starts every generation with an empty k/v cache, plugable_ipadapter.py `hook`)."""
    host.adapter.cache = {}
    return processing_for(host, host.unet, [host.adapter])


def job(host, args, *, batch=1, record=False, scripts=()):
    """One job through the script's life cycle: (final x, denoised per call, inputs per call, p).
    `scripts`: other AlwaysOn scripts' (process, postprocess), run before FastFace's."""
    p = new_p(host)
    for process, _ in scripts:
        process(p)
    calls = []
    if record:   # the denoiser's inputs, seen before FastFace's guard (installed on top of this)
        den = p.sampler.model_wrap_cfg
        original = den.forward

        def spy(x, sigma, *rest):
            calls.append((x.clone(), sigma.clone()))
            return original(x, sigma, *rest)
        den.forward = spy
    webui.process(p, args)
    webui.before_sampling(p)
    x = torch.randn(batch, 4, 2, 2, generator=torch.Generator().manual_seed(5)) * SIGMAS4[0]
    x, outputs = p.sampler.sample(x, SIGMAS4, cn.mark(text(1, batch), True), cn.mark(text(2, batch), False),
                                  [[(i, 1.0)] for i in range(batch)], 5.0)
    webui.postprocess(p, SimpleNamespace(images=[], extra_images=[], index_of_first_image=0, infotexts=[]))
    for _, postprocess in scripts:
        postprocess(p)
    return x, outputs, calls, p


def host_step(host, x, sigma, batch=1):
    """The WebUI's own denoiser result for (x, σ): no FastFace."""
    p = new_p(host)
    den = p.sampler.model_wrap_cfg
    den.steps, den.total_steps = 4, 4
    with torch.no_grad():
        return den(x, sigma, cn.mark(text(2, batch), False), cn.mark(text(1, batch), True), 5.0, 0.0,
                   torch.zeros(batch, 1, 1, 1), [[(i, 1.0)] for i in range(batch)])


class Faults:
    """Out-of-memory errors injected from outside, undone by `clear()` (or at the test's end)."""

    def __init__(self, mp):
        self.mp = mp

    def raise_on(self, owner, name, when):
        """`owner.name` raises on the calls `when(count, *args)` picks; returns the counts."""
        original = getattr(owner, name)
        seen = {"calls": 0, "raised": 0}

        def wrapper(*args, **kwargs):
            seen["calls"] += 1
            if when(seen["calls"], *args):
                seen["raised"] += 1
                raise OOM("CUDA out of memory (injected)")
            return original(*args, **kwargs)

        self.mp.setattr(owner, name, wrapper)
        return seen

    def clear(self):
        self.mp.undo()


@pytest.fixture
def faults():
    with pytest.MonkeyPatch.context() as mp:
        yield Faults(mp)


def note(p):
    return p.extra_generation_params.get(NOTE_KEY) or ""


def fresh_results(host):
    """A FastFace job and a disabled job (and "Show face attention") as a new server gives them."""
    return {"on": job(host, REALISTIC)[0], "off": job(host, REALISTIC.replace(enabled=False))[0],
            "batch": job(host, REALISTIC, batch=2)[0], "preview": job(host, REALISTIC.replace(show_attention=True))[0]}


_FIRST: dict = {}


def first_results(host):
    """`fresh_results` of the first test that asks (the stand-ins are seeded: every test's are the same)."""
    if not _FIRST:
        _FIRST.update(fresh_results(host))
    return dict(_FIRST)


def assert_nothing_left(host, before):
    assert not PatchSet.live
    assert cn.PlugableIPAdapter.__dict__["attn_eval"] is HOST_ATTN_EVAL
    assert all(not m._forward_pre_hooks for m in host.unet.modules())
    after = fresh_results(host)
    for key, value in before.items():   # bit for bit: as if the error had not happened
        assert torch.equal(after[key], value), key


@pytest.mark.parametrize("batch", [1, 2])
def test_oom_in_the_unet_call_with_dcg_rows_gives_the_hosts_step(host, faults, batch):
    before = first_results(host)
    host.unet.rows_seen.clear()
    seen = faults.raise_on(host.unet, "forward", lambda n, x, *a: x.shape[0] == 3 * batch)
    x, outputs, calls, p = job(host, REALISTIC, batch=batch, record=True)
    assert seen["raised"] == 1
    # step 0: 2 rows per image; step 1: the third row ran out of memory (not counted: it raised on
    # entry), then the host's own 2 rows, and the host's own rows from there on
    assert host.unet.rows_seen == [2 * batch] * 4
    text_ = note(p)
    assert MEMORY_WORDS + " the UNet call that carries DCG's extra rows" in text_
    assert "a preset without DCG" in text_ and "internal error" not in text_
    job_ = p.fastface_job
    assert job_.out_of_memory == IN_EXTRA_ROWS and not job_.active
    # from the step that ran out of memory on, every result is the WebUI's own for its input
    # (the spy sits under the guard: it saw step 1 twice, the call that failed and the host's own)
    assert len(calls) == 5 and len(outputs) == 4 and torch.equal(calls[1][0], calls[2][0])
    for (x_in, sigma), got in zip(calls[2:], outputs[1:]):
        assert torch.equal(got, host_step(host, x_in, sigma, batch))
    faults.clear()
    assert_nothing_left(host, before)


@pytest.mark.parametrize("args", [REALISTIC, SCALE_POWER, REALISTIC.replace(show_attention=True)],
                         ids=["dcg+am", "am-only", "with-preview"])
def test_oom_in_the_face_branch_gives_the_hosts_step(host, faults, args):
    """The second face-branch call is in the same UNet call as the first (step 0, down then up):
    the step is the WebUI's own, not half transformed, and so is every later one."""
    before = first_results(host)
    if args.show_attention:
        seen = faults.raise_on(AttentionRecorder, "add", lambda n, *a: n == 2)
    else:
        seen = faults.raise_on(a1111_attention, "ip_attention", lambda n, *a: n == 2)
    x, _, _, p = job(host, args)
    assert seen["raised"] == 1
    assert torch.equal(x, before["off"])   # step 0 on: the WebUI's own trajectory, bit for bit
    # with the preview, the second map recorded is the mid layer's, left to ControlNet's own code
    place = IN_PREVIEW if args.show_attention else IN_FACE_BRANCH
    text_ = note(p)
    assert f"{MEMORY_WORDS} {place} and turned itself off" in text_ and "internal error" not in text_
    assert ("a preset without DCG" in text_) == args.dcg
    assert ("Show face attention off" in text_) == args.show_attention
    job_ = p.fastface_job   # what it held is dropped
    assert job_.out_of_memory == place and job_.recording is None and job_._transforms is None
    faults.clear()
    assert_nothing_left(host, before)


@pytest.mark.parametrize("args,call", [(REALISTIC, 1), (SCALE_POWER, 2), (REALISTIC.replace(enabled=False), 2)],
                         ids=["dcg-step-without-extra-rows", "am-only", "fastface-off"])
def test_the_hosts_own_oom_goes_through_and_leaves_nothing(host, faults, args, call):
    """A UNet call that carries none of FastFace's rows (and no face-branch failure) is the host's."""
    before = first_results(host)
    seen = faults.raise_on(host.unet, "forward", lambda n, *a: n == call)
    with pytest.raises(OOM):
        job(host, args)
    assert seen["raised"] == 1
    assert not PatchSet.live   # undone at once, not only at the next job's start
    assert all(not m._forward_pre_hooks for m in host.unet.modules())
    faults.clear()
    assert_nothing_left(host, before)
