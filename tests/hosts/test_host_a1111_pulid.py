"""fastface.hosts.a1111 with sd-webui-controlnet's PuLID units (issue 13), against the stand-ins in
tests/hosts/a1111_standins.py (`PuLIDAttnSetting` mirrors pulid_attn.py L7-94 in both modes).

Each test fails on a FastFace that leaves PuLID to the host (the state before issue 13): DCG gave
the id-only rows no face, no PuLID layer was transformed, no preview or note was made."""
from types import SimpleNamespace

import pytest
import torch

from fastface.hosts.a1111 import attention as a1111_attention
from fastface.hosts.a1111 import pulid
from fastface.method.transforms import ScalePower, Softmask
from fastface.presets import PRESETS

import a1111_standins as cn
from test_host_a1111 import (host, processing_for, record_denoiser_inputs, reference_step, run,  # noqa: F401
                             text)   # (host: a fixture)

MODES = ["Fidelity", "Extremely style"]


def make_job(host, adapters, kv_bias=False):  # noqa: F811
    """adapters: ("pulid", mode, seed), ("faceid", None, seed) or ("plain", None, seed), each hooked
    like ControlNet does."""
    unet = cn.FakeUNet()
    made = []
    for kind, mode, seed in adapters:
        adapter = cn.PlugableIPAdapter(is_faceid=kind == "faceid", seed=seed, pulid_mode=mode, kv_bias=kv_bias)
        cn.hook_ip_adapter(unet, adapter)
        made.append(adapter)
    return processing_for(host, unet, made), unet, made


IDENTITY = PRESETS["Scale-power only"].replace(sp_s_down=1.0, sp_s_up=1.0, sp_s_mid=1.0, sp_p=1.0)


def pulid_inputs(seed, setting, rows=3, length=12):
    """x (the attn2 input), q, the blended id embedding, and emb_to_k / emb_to_v of one layer."""
    g = torch.Generator().manual_seed(seed)
    adapter = cn.PlugableIPAdapter(is_faceid=False, seed=seed, pulid_mode=setting)
    x = torch.randn(rows, length, cn.C, generator=g)
    q = torch.randn(rows, cn.HEADS, length, cn.C // cn.HEADS, generator=g)
    emb = adapter.ipadapter.cond_emb.expand(rows, -1, -1).clone()
    to_k, to_v = adapter.ipadapter.to_kvs["1_to_k_ip"], adapter.ipadapter.to_kvs["1_to_v_ip"]
    return adapter, x, q, emb, to_k, to_v


# -- the face branch itself -----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_identity_transform_equals_the_host(mode):
    """No transform (an identity scale-power): FastFace's PuLID branch is the host's eval (fp32 rounding)."""
    adapter, x, q, emb, to_k, to_v = pulid_inputs(1, mode)
    setting = adapter.pulid_attn_setting
    host_out = setting.eval(x, q, emb, cn.HEADS, cn.C // cn.HEADS, to_k, to_v)
    ours = pulid.face_branch(setting, x, q, emb, cn.HEADS, cn.C // cn.HEADS, to_k, to_v, ScalePower(1.0, 1.0),
                             sink_exact=True)
    torch.testing.assert_close(ours, host_out, rtol=1e-5, atol=1e-5)
    padded = pulid.face_branch(setting, x, q, emb, cn.HEADS, cn.C // cn.HEADS, to_k, to_v, ScalePower(1.0, 1.0),
                               sink_exact=False)   # the zero tokens materialised: the same
    torch.testing.assert_close(padded, host_out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_transform_reaches_only_the_id_attention_and_the_gate_reads_the_untransformed_map(mode):
    adapter, x, q, emb, to_k, to_v = pulid_inputs(2, mode)
    setting = adapter.pulid_attn_setting
    transform = ScalePower(1.45, 1.3)
    heads, d = cn.HEADS, cn.C // cn.HEADS
    k, v = (t(emb).view(3, -1, heads, d).transpose(1, 2) for t in (to_k, to_v))         # (B, h, 10, d)
    zeros = torch.zeros(3, heads, setting.num_zero, d)
    a = (q @ torch.cat((k, zeros), 2).transpose(-1, -2) * d ** -0.5).softmax(-1)[..., :10]   # padded softmax, id part
    o = (transform(a) @ v).transpose(1, 2).reshape(3, -1, heads * d)
    projection = (x * o).sum(-2, keepdim=True) / (x * x).sum(-2, keepdim=True) * x
    unscaled = (q @ torch.cat((k, zeros), 2).transpose(-1, -2)).softmax(-1)                # the host's gate map
    gate = unscaled.mean(1)[..., :5].sum(-1, keepdim=True)
    expected = o + (gate - 1) * projection if setting.ortho_v2 else o - projection
    got = pulid.face_branch(setting, x, q, emb, heads, d, to_k, to_v, transform, sink_exact=True)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got - setting.eval(x, q, emb, heads, d, to_k, to_v)).abs().max() > 1e-3   # the transform acted
    if setting.ortho_v2:   # a gate taken from the transformed map would be another output
        transformed_gate = transform(unscaled).mean(1)[..., :5].sum(-1, keepdim=True)
        assert (o + (transformed_gate - 1) * projection - got).abs().max() > 1e-3


def test_softmask_statistics_run_over_the_ten_id_tokens():
    adapter, x, q, emb, to_k, to_v = pulid_inputs(3, "Extremely style")
    setting = adapter.pulid_attn_setting
    seen = []
    transform = Softmask(0.65, 5.0, 1.55, invert_first=False, adain=0.7)
    pulid.face_branch(setting, x, q, emb, cn.HEADS, cn.C // cn.HEADS, to_k, to_v, transform, sink_exact=True,
                      recorder=lambda attn, mapped: seen.append((attn, mapped)))
    attn, mapped = seen[0]
    assert attn.shape[-1] == mapped.shape[-1] == 10
    assert (attn.sum(-1) < 1).all()    # the 16 zero tokens' share is in the denominator


# -- through a job: DCG rows, AM, the cache, notes, previews -----------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_dcg_id_only_rows_get_the_pulid_face(host, mode):  # noqa: F811
    """Stylistic (DCG only): the batched job equals three separate branch calls, the id-only one with
    the negative text and the positive mark (so PuLID's cond embedding)."""
    args = PRESETS["Stylistic"]
    p, unet, adapters = make_job(host, [("pulid", mode, 0)])
    pos, neg = text(1, 1), text(2, 1)
    xs = record_denoiser_inputs(p)
    (_, outputs), job = run(p, args.replace(), pos=pos, neg=neg)
    assert job.failed is None, job.failed
    assert [job.rows[(0, k)] for k in range(4)] == [2, 3, 3, 2]
    for step, ((x, sigma), got) in enumerate(zip(xs, outputs)):
        expected = reference_step(unet, x, sigma, pos, neg, args, step, 4, adapters)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_am_transforms_pulid_on_down_and_up_and_the_cache_is_cleared(host, monkeypatch):  # noqa: F811
    p, unet, (adapter,) = make_job(host, [("pulid", "Fidelity", 0)])
    caches_at_call = []
    real = adapter.call_ip

    def call_ip(key, feat, device):
        caches_at_call.append(len(adapter.cache))
        return real(key, feat, device)

    adapter.call_ip = call_ip
    _, job = run(p, PRESETS["Realistic"])
    assert job.failed is None, job.failed
    parts = {part for (_pass, _step, part) in job.am_calls}
    assert parts == {"down", "up"}
    assert job.am_adapters == {"pulid": 8}           # 4 steps × (down + up), one batched call each
    assert adapter.eval_calls == 4                   # the mid layer: the host's own PuLID code
    assert caches_at_call and set(caches_at_call) <= {0, 1}   # never a k/v left from another call
    assert "am_adapters" in job.trace_json()
    assert sum("PuLID unit: mode Fidelity (8 zero tokens, projection ortho_v2)" in n for n in job.notes) == 1


def test_identity_scale_power_job_equals_fastface_off(host):  # noqa: F811
    """AM with s = p = 1 and no DCG: the image is the host's (parity through the whole job)."""
    p, _, _ = make_job(host, [("pulid", "Fidelity", 0)])
    (x_on, _), job = run(p, IDENTITY)
    assert job.am_adapters["pulid"] == 8
    p, _, _ = make_job(host, [("pulid", "Fidelity", 0)])
    (x_off, _), _ = run(p, IDENTITY.replace(enabled=False))
    torch.testing.assert_close(x_on, x_off, rtol=1e-5, atol=1e-5)
    p, _, _ = make_job(host, [("pulid", "Fidelity", 0)])
    (x_am, _), _ = run(p, PRESETS["Scale-power only"])
    assert (x_am - x_off).abs().max() > 1e-4      # real values change the image


def test_invert_first_token_does_not_apply_to_pulid(host, monkeypatch):  # noqa: F811
    seen = []
    real = pulid.face_branch

    def spy(setting, *a, **kw):
        seen.append(a[7])
        return real(setting, *a, **kw)

    monkeypatch.setattr(pulid, "face_branch", spy)
    p, _, _ = make_job(host, [("pulid", "Extremely style", 0)])
    _, job = run(p, PRESETS["Softmask only"].replace(sm_invert_first=True))
    assert job.failed is None, job.failed
    assert seen and all(isinstance(t, Softmask) and t.invert_first is False for t in seen)


def test_pulid_and_faceid_in_one_job_each_by_its_kind(host, monkeypatch):  # noqa: F811
    p, _, (face_unit, pulid_unit) = make_job(host, [("faceid", None, 0), ("pulid", "Fidelity", 1)])
    _, job = run(p, PRESETS["Realistic"])
    assert job.failed is None, job.failed
    assert job.am_adapters == {"faceid": 8, "pulid": 8}
    assert face_unit.eval_calls == pulid_unit.eval_calls == 4     # the mid layers, left to the host


def test_pulid_with_a_plain_ip_adapter_leaves_the_plain_one_alone(host):  # noqa: F811
    p, _, (plain, _) = make_job(host, [("plain", None, 0), ("pulid", "Fidelity", 1)])
    _, job = run(p, PRESETS["Realistic"])
    assert job.failed is None, job.failed
    assert job.am_adapters == {"pulid": 8}
    assert plain.eval_calls == 12      # every layer of every step through the host's own code


def test_biased_kv_pads_explicitly_and_says_so(host):  # noqa: F811
    """K/V with a bias: the zero tokens are not null; FastFace pads them as the host does."""
    p, _, _ = make_job(host, [("pulid", "Fidelity", 0)], kv_bias=True)
    (x_on, _), job = run(p, IDENTITY)
    assert any("zero tokens are computed explicitly" in n for n in job.notes)
    assert job.am_adapters["pulid"] == 8
    p, _, _ = make_job(host, [("pulid", "Fidelity", 0)], kv_bias=True)
    (x_off, _), _ = run(p, IDENTITY.replace(enabled=False))
    torch.testing.assert_close(x_on, x_off, rtol=1e-5, atol=1e-5)


def test_show_attention_previews_the_ten_pulid_tokens(host):  # noqa: F811
    from fastface.hosts import recording
    from fastface.views.attnmaps import token_layout

    p, _, _ = make_job(host, [("pulid", "Fidelity", 0)])
    box = {}
    original_finish = recording.finish

    def keep(job, p_, processed, *rest):
        box["maps"] = job.recording.recorder.images() if job.recording is not None else []
        box["pulid"] = job.recording.pulid if job.recording is not None else None
        return original_finish(job, p_, processed, *rest)

    recording.finish, restore = keep, recording.finish
    try:
        _, job = run(p, PRESETS["Realistic"].replace(show_attention=True))
    finally:
        recording.finish = restore
    assert box["pulid"] is True
    maps = box["maps"]
    assert maps and maps[0].tokens == 10
    layout = token_layout(10, pulid=True)
    assert layout.kind == "PuLID" and [len(g[1]) for g in layout.groups] == [5, 5]


def test_a_pulid_setting_of_unknown_shape_is_left_to_the_host(host):  # noqa: F811
    p, _, (adapter,) = make_job(host, [("pulid", "Fidelity", 0)])
    adapter.pulid_attn_setting = SimpleNamespace(num_zero="eight", ortho=False, ortho_v2=True)
    assert a1111_attention.identity_kind(adapter) is None
    adapter.pulid_attn_setting = cn.PULID_SETTING_FIDELITY
    assert a1111_attention.identity_kind(adapter) == "pulid"
