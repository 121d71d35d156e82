""""Show face attention" on the host stand-ins (tests/a1111_standins.py, tests/forge_standins.py):
recording changes no output, recording off installs nothing, the recorded rows are the full branch,
and the previews are appended as extra images after the generated ones."""
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import a1111_standins as cn
import forge_standins as fs
from fastface.hosts import forge, recording, webui
from fastface.hosts.a1111 import attention as a1111_attention
from fastface.hosts.forge import attention as forge_attention
from fastface.views.attnmaps import AttentionRecorder
from fastface.hosts.common import Job, PatchSet
from fastface.presets import PRESETS

from test_host_a1111 import host, make_job, run, text  # noqa: F401 (fixture)
from test_host_forge import Run, forge_env  # noqa: F401 (fixture)

PRESET_NAMES = ["Realistic", "Realistic portrait", "Stylistic", "Scale-power only", "Softmask only", "Off"]


def shown(args, on=True):
    return {**{n: v for n, v in args.to_dict().items()}, "show_attention": on}


# -- A1111 ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", PRESET_NAMES)
@pytest.mark.parametrize("batch", [1, 2])
def test_a1111_recording_changes_no_output(host, preset, batch):
    outputs = {}
    for on in (False, True):
        p, _, _ = make_job(host)
        (x, denoised), job = run(p, shown(PRESETS[preset], on), batch=batch)
        assert job.failed is None, job.failed
        outputs[on] = (x, denoised, job)
    assert torch.equal(outputs[False][0], outputs[True][0])
    assert all(torch.equal(a, b) for a, b in zip(outputs[False][1], outputs[True][1]))
    job = outputs[True][2]
    maps = job.recording.recorder.images()
    assert [m.image for m in maps] == list(range(batch))
    assert sorted(maps[0].passes[0]) == [0, 1, 2, 3]
    for step in range(4):
        cells = maps[0].passes[0][step]
        assert set(cells) == {"down", "mid", "up"}
        am = PRESETS[preset].am_mode != "off"
        assert cells["down"].transformed == am and cells["up"].transformed == am
        assert not cells["mid"].transformed     # the mid block is not transformed by default
        assert cells["down"].layers == 1        # one attn2 layer per part in the stand-in UNet
    assert outputs[False][2].recording is None


def _attn2_hooks(unet):
    return [len(layer._forward_pre_hooks) for layer in unet.attn_layers()] + [len(unet._forward_pre_hooks)]


@pytest.mark.parametrize("preset", ["Stylistic", "Realistic"])
def test_a1111_recording_off_installs_nothing(host, monkeypatch, preset):
    seen = []
    real = a1111_attention.ip_attention

    def spy(*args, **kwargs):
        seen.append(kwargs.get("recorder"))
        return real(*args, **kwargs)

    monkeypatch.setattr(a1111_attention, "ip_attention", spy)
    hooks = {}
    for on in (False, True):
        p, unet, _ = make_job(host)
        webui.process(p, shown(PRESETS[preset], on))
        webui.before_sampling(p)
        hooks[on] = _attn2_hooks(unet)
        webui.postprocess(p, None)
    if preset == "Stylistic":   # no AM: no part hooks at all unless recording
        assert hooks[False] == [0, 0, 0, 1] and hooks[True] == [1, 1, 1, 2]
    else:                       # AM: the part hooks exist anyway; recording adds the row tracker only
        assert hooks[False] == [1, 1, 1, 1] and hooks[True] == [1, 1, 1, 2]
    p, _, _ = make_job(host)
    seen.clear()
    run(p, shown(PRESETS["Realistic"], False))
    assert seen and all(r is None for r in seen)   # ip_attention gets no recorder when off


def _spy_face_attention(monkeypatch, job_box):
    """Every face-branch (q, k) that reaches ip_attention or recording.record_maps, with the step,
    part and the ControlNet cond mark of its rows."""
    calls = []
    real_ip, real_maps = recording.ip_attention, recording.record_maps   # recording jobs go through `recording`

    def note(q, k):
        job = job_box[0]
        calls.append(dict(step=job.current_pass.step, part=job.layer_part, q=q.detach().clone(),
                          k=k.detach().clone(), mark=cn.ControlNetState.cond_mark.flatten().tolist()))

    def ip_spy(q, k, v, transform=None, **kw):
        note(q, k)
        return real_ip(q, k, v, transform, **kw)

    def maps_spy(recorder, q, k, transform=None, **kw):
        note(q, k)
        return real_maps(recorder, q, k, transform, **kw)

    monkeypatch.setattr(recording, "ip_attention", ip_spy)
    monkeypatch.setattr(recording, "record_maps", maps_spy)
    return calls


def _direct(calls, keep_rows):
    """(step, part) → mean over the calls of softmax(q·kᵀ/√d) of the kept rows, mean over heads."""
    sums = {}
    for c in calls:
        rows = keep_rows(c)
        if rows is None:
            continue
        a = (c["q"].float() @ c["k"].float().transpose(-1, -2) * c["q"].shape[-1] ** -0.5).softmax(-1)
        m = a[rows].mean(dim=1).transpose(1, 2).reshape(-1, a.shape[-1], 2, 2)
        total, n = sums.get((c["step"], c["part"]), (0, 0))
        sums[(c["step"], c["part"])] = (total + m, n + 1)
    return {k: t / n for k, (t, n) in sums.items()}


def test_a1111_records_the_full_branch_rows_with_dcg(host, monkeypatch):
    """DCG with 3 blocks [cond, id-only, uncond]: rows 0..B-1 of every call are recorded."""
    box = [None]
    calls = _spy_face_attention(monkeypatch, box)
    p, _, _ = make_job(host)
    original = webui.before_sampling

    def before(p_, *a):
        box[0] = p_.fastface_job
        return original(p_, *a)

    monkeypatch.setattr(webui, "before_sampling", before)
    _, job = run(p, shown(PRESETS["Realistic"]), batch=2)
    rec = job.recording.recorder
    expected = _direct(calls, lambda c: slice(0, 2))
    maps = rec.images()
    for (step, part), m in expected.items():
        for image in range(2):
            torch.testing.assert_close(maps[image].passes[0][step][part].before, m[image], rtol=1e-5, atol=1e-6)
    assert {len(c["mark"]) for c in calls} == {4, 6}   # 2 or 3 blocks of 2 rows: the layouts were exercised


def test_a1111_split_calls_record_only_the_cond_call(host, monkeypatch):
    """Prompt and negative of different lengths: A1111 evaluates cond and uncond in separate UNet
    calls; only the cond call's rows are the images' full branch."""
    box = [None]
    calls = _spy_face_attention(monkeypatch, box)
    p, _, _ = make_job(host)
    original = webui.before_sampling
    monkeypatch.setattr(webui, "before_sampling", lambda p_, *a: (box.__setitem__(0, p_.fastface_job), original(p_, *a))[1])
    _, job = run(p, shown(PRESETS["Scale-power only"]), batch=2, pos=text(1, 2, tokens=6), neg=text(2, 2, tokens=12))
    assert job.failed is None
    assert {tuple(c["mark"]) for c in calls} == {(1.0, 1.0), (0.0, 0.0)}   # separate cond and uncond calls
    expected = _direct(calls, lambda c: slice(0, 2) if c["mark"] == [1.0, 1.0] else None)
    maps = job.recording.recorder.images()
    for (step, part), m in expected.items():
        cell = maps[0].passes[0][step][part]
        assert cell.layers == 1
        torch.testing.assert_close(cell.before, m[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(maps[1].passes[0][step][part].before, m[1], rtol=1e-5, atol=1e-6)


def test_a1111_previews_are_appended_after_the_generated_images(host):
    p, _, _ = make_job(host)
    p.batch_size, p.iteration = 2, 0
    (x, _), job = run(p, shown(PRESETS["Realistic"]), batch=2)
    grid = Image.new("RGB", (64, 32))
    images = [Image.new("RGB", (32, 32), (i * 90, 0, 0)) for i in range(2)]
    processed = SimpleNamespace(images=[grid] + images, index_of_first_image=1, infotexts=["g", "a", "b"])
    assert job.recording is not None   # run() ended the job with processed=None: nothing drawn yet
    added = recording.finish(job, p, processed)
    assert added == 2 and len(processed.images) == 5 and processed.images[:3] == [grid] + images
    assert all(im.size[0] > 64 for im in processed.images[3:])
    assert job.recording is None   # the maps are freed


# -- Forge ------------------------------------------------------------------------------------------
def forge_run(args, on, **kw):
    run_ = Run(args.replace(show_attention=on), **kw)
    recording.begin(run_.job)
    run_.start()
    forge.start_recording_pass(run_.job, run_.p)
    return run_


@pytest.mark.parametrize("preset", PRESET_NAMES)
@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_forge_recording_changes_no_output(forge_env, preset, cfg):
    outs = {}
    for on in (False, True):
        r = forge_run(PRESETS[preset], on, cfg=cfg, batch=2)
        outs[on] = (r.sample(), r)
        r.end()
        assert r.job.failed is None, r.job.failed
    assert torch.equal(outs[False][0], outs[True][0])
    r = outs[True][1]
    maps = r.job.recording.recorder.images()
    assert [m.image for m in maps] == [0, 1]
    for step in range(4):
        cells = maps[0].passes[0][step]
        assert set(cells) == {"down", "mid", "up"}
        # one layer per part and one sampler evaluation per step: the id-only evaluation of DCG
        # (also labelled COND) is not recorded
        assert all(c.layers == 1 for c in cells.values())
        assert cells["down"].transformed == (PRESETS[preset].am_mode != "off")
    assert outs[False][1].job.recording is None


@pytest.mark.parametrize("preset", ["Off", "Stylistic"])
def test_forge_records_the_cond_chunk(forge_env, monkeypatch, preset):
    """Forge's rows are chunk-major with labels (`cond_or_uncond`): the COND chunk is recorded.
    Off: Forge's own CFG call [cond, uncond]. Stylistic: DCG puts the id-only rows in the same
    call (relabelled COND, or an appended COND chunk); they must not be taken for the prompt's."""
    seen, labels = [], []
    real = recording.record_maps
    r = forge_run(PRESETS[preset], True, cfg=2.5, batch=2)

    def spy(recorder, q, k, transform=None):
        st = r.job.current_pass
        block, chunks = labels[-1]
        seen.append(dict(q=q.clone(), k=k.clone(), chunks=chunks, block=block, step=st.step))
        return real(recorder, q, k, transform)

    original = forge_attention.FaceAttn2Patch.__call__

    def call(self, n, c, v, extra):
        # the real chunk labels (FastFace's own, where it relabelled the id-only rows COND)
        labels.append((extra["block"][0], list(extra.get("fastface_chunks") or extra.get("cond_or_uncond") or [])))
        return original(self, n, c, v, extra)

    monkeypatch.setattr(recording, "record_maps", spy)
    monkeypatch.setattr(forge_attention.FaceAttn2Patch, "__call__", call)
    r.sample()
    r.end()
    cells = r.job.recording.recorder.images()
    both = [c for c in seen if len(c["chunks"]) > 1]
    assert both, "no call evaluated several chunks together: the chunk slicing was not exercised"
    # the output block: there the rows' own text has shaped q (in the input block q depends on x
    # only, so the id-only and the prompt rows would look alike)
    by_step = {}
    for c in seen:
        if c["block"] == "output":
            by_step.setdefault(c["step"], []).append(c)
    assert len(by_step) == 4
    for step, calls in by_step.items():
        first = calls[0]   # the step's sampler evaluation
        start = first["chunks"].index(0) * 2
        q, k = first["q"], first["k"]
        a = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)   # (rows, heads, L, T)
        for image in range(2):
            expected = a[start + image].mean(0).T.reshape(-1, 4, 4)
            torch.testing.assert_close(cells[image].passes[0][step]["up"].before, expected, rtol=1e-5, atol=1e-6)
            if len(first["chunks"]) > 1:   # and it is not the other chunk's map
                other = (start + 2 + image) % a.shape[0]
                assert not torch.allclose(a[other].mean(0).T.reshape(-1, 4, 4), expected, atol=1e-4)


def test_forge_previews_go_to_forges_extra_images(forge_env):
    r = forge_run(PRESETS["Realistic"], True, batch=1)
    r.sample()
    r.end()
    processed = SimpleNamespace(images=[Image.new("RGB", (32, 32))], index_of_first_image=0, infotexts=["a"],
                                extra_images=[])
    assert recording.finish(r.job, r.p, processed) == 1
    assert len(processed.images) == 1 and len(processed.extra_images) == 1


def test_recording_error_never_fails_the_job(host, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(AttentionRecorder, "add", broken)
    outs = []
    for on in (False, True):
        p, _, _ = make_job(host)
        (x, _), job = run(p, shown(PRESETS["Realistic"], on))
        outs.append(x)
        assert job.failed is None
    assert torch.equal(outs[0], outs[1])


def test_recording_keeps_the_kernel_output_where_kernels_would_run(monkeypatch):
    """On CUDA the unrecorded run takes the fused kernels (up to 2e-3 from the torch path in fp16
    on an H200, bench/check_preview_cuda.py); a recorder must not switch the output to the torch
    path there: the output comes from the kernel call, the maps are computed beside it."""
    from fastface.method.attention import KernelSwitch
    from fastface.method.transforms import ScalePower

    calls = []
    real = recording.ip_attention

    def spy(q, k, v, transform=None, *, sink=0, recorder=None, kernels=None):
        calls.append(dict(recorder=recorder, kernels=kernels))
        return real(q, k, v, transform, sink=sink, recorder=recorder)

    monkeypatch.setattr(recording, "ip_attention", spy)
    monkeypatch.setattr(recording, "_kernels_run", lambda q: True)   # as on CUDA with Triton
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, n, 8, generator=g) for n in (16, 4, 4))
    transform = ScalePower(s=1.5, p=1.3)
    got = []
    out = recording.face_attention(q, k, v, transform, kernels=KernelSwitch(),
                                 recorder=lambda a, b: got.append((a, b)))
    assert len(calls) == 1 and calls[0]["recorder"] is None and calls[0]["kernels"].enabled
    expected = []
    torch.testing.assert_close(out, real(q, k, v, transform))
    real(q, k, v, transform, recorder=lambda a, b: expected.append((a, b)))
    torch.testing.assert_close(got[0][0], expected[0][0])
    torch.testing.assert_close(got[0][1], expected[0][1])
    calls.clear()   # kernels switched off (or not available): the maps come from the call itself
    recording.face_attention(q, k, v, transform, kernels=KernelSwitch(enabled=False), recorder=lambda a, b: None)
    assert calls[0]["recorder"] is not None


def test_reforge_api_request_gets_the_previews_in_processed_images(forge_env):
    """reForge's API encodes `processed.images` only (api.py L488, L559): for an API request the
    previews follow the generated images there, as on A1111; its UI shows `extra_images`."""
    for is_api, in_images in ((True, 1), (False, 0)):
        r = forge_run(PRESETS["Realistic"], True, batch=1)
        r.p.is_api = is_api
        r.sample()
        r.end()
        processed = SimpleNamespace(images=[Image.new("RGB", (32, 32))], index_of_first_image=0, infotexts=["a"],
                                    extra_images=[])
        assert recording.finish(r.job, r.p, processed, extra_images_reach_api=False) == 1
        assert (len(processed.images), len(processed.extra_images)) == (1 + in_images, 1 - in_images)


class _Forge2Api:   # Forge 2 dfdcbab6 modules/api/api.py L502 (the line that matters)
    def text2imgapi(self, processed, send_images=True, encode_pil_to_base64=str):
        return list(map(encode_pil_to_base64, processed.images + processed.extra_images)) if send_images else []


class _ReforgeApi:   # reForge 3b56b268 modules/api/api.py L488
    def text2imgapi(self, processed, send_images=True, encode_pil_to_base64=str):
        return list(map(encode_pil_to_base64, processed.images)) if send_images else []


@pytest.mark.parametrize("api_class, expected", [(_Forge2Api, True), (_ReforgeApi, False), (None, True)])
def test_whether_the_hosts_api_returns_extra_images_is_read_from_it(monkeypatch, api_class, expected):
    import sys
    import types

    from fastface.hosts import webui

    api_module = types.ModuleType("modules.api.api")
    if api_class is not None:
        api_module.Api = api_class
    package = types.ModuleType("modules.api")
    package.api = api_module
    modules = sys.modules.get("modules") or types.ModuleType("modules")
    monkeypatch.setitem(sys.modules, "modules", modules)
    monkeypatch.setitem(sys.modules, "modules.api", package)
    monkeypatch.setitem(sys.modules, "modules.api.api", api_module)
    webui._api_returns_extra_images.cache_clear()
    try:
        assert webui._api_returns_extra_images() is expected
    finally:
        webui._api_returns_extra_images.cache_clear()
