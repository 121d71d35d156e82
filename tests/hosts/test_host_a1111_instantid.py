"""fastface.hosts.a1111 with sd-webui-controlnet's InstantID (issue 22): the IP-Adapter unit (16
Resampler tokens, `ipadapter.is_instantid`, ipadapter_model.py L280) followed by IdentityNet, a
ControlNet whose context is that unit's embedding chosen per row by the mark (hook.py L600-602;
`a1111_standins.IdentityNet`).

Each test fails on a FastFace that leaves InstantID to the host (main before issue 22): DCG gave the
id-only rows no face, no InstantID layer was transformed, no preview, a "no FaceID unit" note."""
import pytest
import torch

from fastface.hosts import recording
from fastface.method import attention as method_attention
from fastface.method.schedule import branches_needed
from fastface.method.transforms import Softmask
from fastface.presets import PRESETS
from fastface.views.attnmaps import token_layout

import a1111_standins as cn
from test_host_a1111 import (host, processing_for, record_denoiser_inputs, reference_step, run,  # noqa: F401
                             text)   # (host: a fixture)

MODES = cn.IdentityNet.MODES
IDENTITY = PRESETS["Scale-power only"].replace(sp_s_down=1.0, sp_s_up=1.0, sp_s_mid=1.0, sp_p=1.0)


def make_job(host, mode="Balanced", faceid=False, identitynet=True):  # noqa: F811
    """The InstantID pair as sd-webui-controlnet runs it (the IP unit hooked into the UNet's attn2,
    IdentityNet fed its embedding), plus optionally a FaceID unit."""
    unet = cn.FakeUNet()
    made = []
    if faceid:
        made.append(cn.PlugableIPAdapter(is_faceid=True, seed=3))
    ip_unit = cn.PlugableIPAdapter(is_faceid=False, seed=0, instantid=True)
    made.append(ip_unit)
    for adapter in made:
        cn.hook_ip_adapter(unet, adapter)
    net = None
    if identitynet:
        net = cn.IdentityNet(ip_unit, mode)
        unet.controls.append(net)
    return processing_for(host, unet, made), unet, made, ip_unit, net


def _is(rows, emb):
    return all(torch.equal(row, emb[0]) for row in rows)


@pytest.mark.parametrize("mode", MODES)
def test_dcg_id_only_rows_get_the_face_tokens_and_identitynets_face_context(host, mode):  # noqa: F811
    """Stylistic (DCG only): each step equals the three branches evaluated one by one (the id-only one
    with the negative text and the positive mark), and inside the batched call the id-only rows get
    IdentityNet's face context and control as a cond row does, the uncond rows Resampler(0) (and no
    control when ControlNet is more important)."""
    args = PRESETS["Stylistic"]
    p, unet, adapters, ip_unit, net = make_job(host, mode)
    pos, neg = text(1, 1), text(2, 1)
    xs = record_denoiser_inputs(p)
    (_, outputs), job = run(p, args.replace(), pos=pos, neg=neg)
    assert job.failed is None, job.failed
    assert [job.rows[(0, k)] for k in range(4)] == [branches_needed(k, 4, args).rows_per_image for k in range(4)] \
        == [2, 3, 3, 2]
    calls = list(net.seen)
    assert [len(c["marks"]) for c in calls] == [2, 3, 3, 2]
    cond, uncond = ip_unit.image_emb.cond_emb, ip_unit.image_emb.uncond_emb
    for call in calls:
        if len(call["marks"]) == 3:     # [full, id-only, uncond] (dcg.py "extra_id")
            assert call["marks"] == [1.0, 1.0, 0.0]
            assert _is(call["context"][:2], cond) and _is(call["context"][2:], uncond)
            assert call["control"][1] > 0                               # IdentityNet acts on the id-only row
            assert (call["control"][2] == 0) == (mode == "ControlNet is more important")
        else:                           # [full, id-only in the uncond slot] (dcg.py "id_in_uncond")
            assert call["marks"] == [1.0, 1.0] and _is(call["context"], cond) and min(call["control"]) > 0
    for step, ((x, sigma), got) in enumerate(zip(xs, outputs)):
        expected = reference_step(unet, x, sigma, pos, neg, args, step, 4, adapters)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # the face context reaches the result: without IdentityNet's face on the id-only rows it differs
    p2, unet2, adapters2, ip2, net2 = make_job(host, mode)
    net2.context_override = cn.ImageEmbed(ip2.image_emb.uncond_emb, ip2.image_emb.uncond_emb)
    x, sigma = xs[1]
    other = reference_step(unet2, x, sigma, pos, neg, args, 1, 4, adapters2)
    assert (other - outputs[1]).abs().max() > 1e-4


def test_am_transforms_instantid_on_down_and_up_and_leaves_mid_to_the_host(host):  # noqa: F811
    p, _, _, ip_unit, _ = make_job(host)
    _, job = run(p, PRESETS["Realistic"])
    assert job.failed is None, job.failed
    assert {part for (_pass, _step, part) in job.am_calls} == {"down", "up"}
    assert job.am_adapters == {"instantid": 8}      # 4 steps × (down + up), one batched call each
    assert ip_unit.eval_calls == 4                   # the mid layer: sd-webui-controlnet's own code
    assert '"am_adapters":{"instantid":8}' in job.trace_json()


def test_identity_transform_job_equals_fastface_off(host):  # noqa: F811
    """AM with s = p = 1 and no DCG: the image is the host's (parity through the whole job, IdentityNet on)."""
    p, *_ = make_job(host)
    (x_on, _), job = run(p, IDENTITY)
    assert job.am_adapters["instantid"] == 8
    p, *_ = make_job(host)
    (x_off, _), _ = run(p, IDENTITY.replace(enabled=False))
    torch.testing.assert_close(x_on, x_off, rtol=1e-5, atol=1e-5)
    p, *_ = make_job(host)
    (x_am, _), _ = run(p, PRESETS["Scale-power only"])
    assert (x_am - x_off).abs().max() > 1e-4      # real values change the image


def test_invert_first_token_does_not_apply_to_instantid(host, monkeypatch):  # noqa: F811
    seen = []
    real = method_attention.ip_attention

    def spy(q, k, v, transform, **kw):
        seen.append((k.shape[-2], transform))
        return real(q, k, v, transform, **kw)

    from fastface.hosts.a1111 import attention as a1111_attention
    monkeypatch.setattr(a1111_attention, "ip_attention", spy)
    p, *_ = make_job(host, faceid=True)
    _, job = run(p, PRESETS["Softmask only"].replace(sm_invert_first=True))
    assert job.failed is None, job.failed
    by_tokens = {tokens: {t.invert_first for _, t in seen if _ == tokens} for tokens, _t in seen}
    assert by_tokens == {cn.T_INSTANTID: {False}, cn.T_FACE: {True}}   # FaceID keeps the option
    assert all(isinstance(t, Softmask) for _, t in seen)


def test_instantid_pair_and_a_faceid_unit_in_one_job(host):  # noqa: F811
    p, unet, adapters, _, _ = make_job(host, faceid=True)
    pos, neg = text(1, 1), text(2, 1)
    xs = record_denoiser_inputs(p)
    args = PRESETS["Stylistic"]
    (_, outputs), job = run(p, args.replace(), pos=pos, neg=neg)
    assert job.failed is None, job.failed
    for step, ((x, sigma), got) in enumerate(zip(xs, outputs)):
        torch.testing.assert_close(got, reference_step(unet, x, sigma, pos, neg, args, step, 4, adapters),
                                   rtol=1e-5, atol=1e-5)
    p, *_ = make_job(host, faceid=True)
    _, job = run(p, PRESETS["Realistic"])
    assert job.am_adapters == {"faceid": 8, "instantid": 8}
    assert job.notes == ["InstantID unit: 16 face tokens (no background token), Invert first token does not apply "
                         "to InstantID"]


def test_an_instantid_job_has_no_no_faceid_unit_note(host):  # noqa: F811
    p, *_ = make_job(host, identitynet=False)
    _, job = run(p, PRESETS["Realistic"])
    assert not any("no FaceID unit" in n for n in job.notes)
    assert sum(n.startswith("InstantID unit: 16 face tokens") for n in job.notes) == 1


def test_show_attention_previews_the_sixteen_instantid_tokens_as_one_face(host):  # noqa: F811
    p, *_ = make_job(host)
    box = {}
    original_finish = recording.finish

    def keep(job, p_, processed, *rest):
        box["maps"] = job.recording.recorder.images() if job.recording is not None else []
        box["kind"] = job.recording.kind if job.recording is not None else None
        return original_finish(job, p_, processed, *rest)

    recording.finish, restore = keep, recording.finish
    try:
        _, job = run(p, PRESETS["Realistic"].replace(show_attention=True))
    finally:
        recording.finish = restore
    assert job.failed is None, job.failed
    assert box["kind"] == "instantid"
    maps = box["maps"]
    assert maps and maps[0].tokens == 16
    layout = token_layout(16, plus=True, v2=False, layout="instantid")   # the flags A1111 has for it
    assert layout.kind == "InstantID" and layout.groups == (("face", tuple(range(16))),) and layout.separate == ()
