"""fastface.hosts.forge with the built-in IP-Adapter's InstantID (issue 22), against the Forge 2
stand-ins (tests/hosts/forge_standins.py): an `IPAdapter` with `is_instant_id` (IPAdapterPlus.py
L284) and a `Resampler` projection, 16 tokens, and the conditioning modifier that gives every
ControlNet unit the face tokens as its context on COND rows, Resampler(0) on UNCOND rows (L734-741,
backend/patcher/controlnet.py L292-296). Forge computes a ControlNet's signal before
`model_function_wrapper` (sampling_function.py L261-273), from the host's labels.

Each test fails on a FastFace that leaves InstantID to the host (main before issue 22)."""
import pytest
import torch

from fastface.hosts import forge, recording
from fastface.hosts.forge import attention as forge_attention, batching as forge_batching, dcg as forge_dcg
from fastface.method.transforms import Softmask
from fastface.presets import PRESETS

import forge_standins as fs
from test_host_forge import REALISTIC, STYLISTIC, Run, float64_standins, forge_env, reference_calls  # noqa: F401

# Forge's control modes (sd_forge_controlnet/scripts/controlnet.py L473-501): Balanced has no
# weighting; "ControlNet is more important" the soft weights for COND rows and zero for UNCOND rows
MODES = {"Balanced": {}, "ControlNet is more important": dict(positive_weight=0.5615, negative_weight=0.0)}
IDENTITY = PRESETS["Scale-power only"].replace(sp_s_down=1.0, sp_s_up=1.0, sp_s_mid=1.0, sp_p=1.0)


def instantid_run(args, *, mode="Balanced", faceid=False, control=True, **kw):
    """The InstantID pair on Forge: the IP-Adapter unit (and optionally a FaceID unit after it, whose
    adapter joins the same attn2 patches) and a keypoint ControlNet unit."""
    net = fs.ControlNet(**MODES[mode]) if control else None
    run = Run(args, adapter=fs.Adapter(faceid=False, instant_id=True), control=net, **kw)
    if faceid:
        objects = run.p.sd_model.forge_objects
        objects.unet = fs.install_ip_adapter(objects.unet, fs.Adapter(faceid=True, seed=5), weight=0.6)
        run.controlnet_unet = objects.unet
    return run, net


def _faces(run):
    patch = next(iter(run.controlnet_unet.model_options["transformer_options"]["patches_replace"]["attn2"].values()))
    return patch.conds[0][0], patch.unconds[0][0]       # the InstantID unit's (16, C) face tokens, Resampler(0)


@pytest.mark.parametrize("mode", list(MODES))
def test_dcg_id_only_rows_get_identitynets_face_context(forge_env, mode):
    """Realistic at CFG 2.5, two images: each step equals the three branches evaluated as separate
    `calc_cond_uncond_batch` calls (id-only = negative text in the COND slot, so the modifier gives
    IdentityNet the face), and every ControlNet evaluation gave COND rows the face tokens. Balanced:
    one UNet call per step (the id-only rows' signal recomputed as a COND chunk's); ControlNet is
    more important: the id-only branch takes its own call (the weighting differs per label)."""
    run, net = instantid_run(REALISTIC, mode=mode, cfg=2.5, batch=2)
    run.start()
    got = run.sample()
    calls, seen = dict(run.job.calls), list(net.seen)
    expected = reference_calls(run, REALISTIC)
    face, resampler_zero = _faces(run)
    run.end()
    assert run.job.failed is None, run.job.failed
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-5)
    balanced = mode == "Balanced"
    for k in range(4):
        assert calls[(0, k)] == forge_dcg.unet_calls_per_evaluation(k, 4, REALISTIC, batched=balanced) \
            == (1 if balanced else 2)
    for call in seen:   # the host's evaluations and FastFace's: the face context exactly on COND rows
        for mark, context in zip(call["marks"], call["context"]):
            assert torch.equal(context, face if mark == 0 else resampler_zero)
    face_rows = [sum(m == 0 for m in call["marks"]) for call in seen]
    assert sum(face_rows) == 2 * 4 + 2 * 4    # per step: the 2 images' full rows and their id-only rows


def test_without_the_cond_signal_the_batched_id_rows_would_get_resampler_zero(forge_env, monkeypatch):
    """The check above can fail: with the signal the host computed for the negative chunk (its
    UNCOND labels, so Resampler(0) as IdentityNet's context) the trajectory is another."""
    monkeypatch.setattr(forge_batching, "_control_reads_labels", lambda c: False)
    run, _ = instantid_run(REALISTIC, cfg=2.5, batch=2)
    run.start()
    got = run.sample()
    expected = reference_calls(run, REALISTIC)
    run.end()
    assert not torch.allclose(got, expected, atol=1e-3)


def test_am_transforms_instantid_and_an_identity_transform_is_forges_own(forge_env):
    run, _ = instantid_run(REALISTIC, cfg=2.5)
    run.start()
    run.sample()
    run.end()
    assert run.job.failed is None, run.job.failed
    assert {part for (_p, _s, part) in run.job.am_calls} == {"down", "up"}
    assert run.job.am_adapters == {"instantid": 8}       # 4 steps × (down + up), one call each
    on, _ = instantid_run(IDENTITY, cfg=2.5)
    on.start()
    x_on = on.sample()
    on.end()
    assert on.job.am_adapters["instantid"] == 8
    off, _ = instantid_run(IDENTITY, cfg=2.5, fastface=False)
    x_off = off.sample()
    assert torch.allclose(x_on, x_off, atol=1e-4, rtol=1e-5)   # the face branch is fp32 on every host
    real, _ = instantid_run(PRESETS["Scale-power only"], cfg=2.5)
    real.start()
    assert not torch.allclose(real.sample(), x_off, atol=1e-4)


def test_invert_first_token_does_not_apply_to_instantid(forge_env, monkeypatch):
    seen = []
    real = forge_attention.ip_attention

    def spy(q, k, v, transform, **kw):
        seen.append((k.shape[-2], transform))
        return real(q, k, v, transform, **kw)

    monkeypatch.setattr(forge_attention, "ip_attention", spy)
    run, _ = instantid_run(PRESETS["Softmask only"].replace(sm_invert_first=True), faceid=True, cfg=2.5)
    run.start()
    run.sample()
    run.end()
    assert run.job.failed is None, run.job.failed
    assert all(isinstance(t, Softmask) for _, t in seen)
    assert {tokens: {t.invert_first for n, t in seen if n == tokens} for tokens, _ in seen} == {16: {False}, 4: {True}}


def test_instantid_pair_and_a_faceid_unit_in_one_job(forge_env):
    run, _ = instantid_run(REALISTIC, faceid=True, cfg=2.5)
    run.start()
    got = run.sample()
    transformed = dict(run.job.am_adapters)     # before the reference adds its own calls
    expected = reference_calls(run, REALISTIC)
    run.end()
    assert run.job.failed is None, run.job.failed
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-5)
    assert transformed == {"instantid": 8, "faceid": 8}
    assert run.job.notes == ["InstantID unit: 16 face tokens (no background token), Invert first token does not "
                             "apply to InstantID"]


def test_plain_ip_adapter_plus_is_left_to_forge(forge_env):
    """IP-Adapter Plus also projects with a Resampler (of CLIP features) and carries
    `is_instant_id = False`: not an identity unit, the "no FaceID unit" note as before."""
    plus = fs.Adapter(faceid=False)
    plus.is_instant_id, plus.image_proj_model = False, fs.Resampler(embedding_dim=1280)
    run = Run(REALISTIC, adapter=plus, cfg=2.5).start()
    run.sample()
    run.end()
    assert run.job.am_adapters == {} and not run.job.am_calls
    assert any(n.startswith("no FaceID unit") for n in run.job.notes)


def test_show_attention_records_the_sixteen_instantid_tokens(forge_env):
    run, _ = instantid_run(REALISTIC.replace(show_attention=True), cfg=2.5)
    recording.begin(run.job)
    run.start()
    forge.start_recording_pass(run.job, run.p)
    run.sample()
    rec = run.job.recording
    run.end()
    assert run.job.failed is None, run.job.failed
    assert rec.kind == "instantid"
    maps = rec.recorder.images()
    assert maps and maps[0].tokens == 16 and set(maps[0].passes[0][0]) == {"down", "mid", "up"}
