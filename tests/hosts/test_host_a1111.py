"""fastface.hosts.a1111 against the A1111 / sd-webui-controlnet stand-ins (tests/a1111_standins.py)."""
from types import SimpleNamespace

import pytest
import torch

from fastface.method import transforms

from fastface.method.guidance import dcg_x0
from fastface.hosts import a1111, webui
from fastface.hosts.a1111 import dcg as a1111_dcg
from fastface.hosts.common import PatchSet
from fastface.presets import PRESETS
from fastface.method.schedule import alpha_beta, branches_needed, rescale_phi

import a1111_standins as cn

SIGMAS4 = [14.6, 4.0, 1.5, 0.5, 0.0]
TOKENS = 6


def text(seed, rows=1, tokens=TOKENS):
    return torch.randn(rows, tokens, cn.C, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def host(monkeypatch):
    empty = torch.randn(1, TOKENS, cn.C, generator=torch.Generator().manual_seed(99))
    shared, callbacks = cn.install_fake_webui_modules(monkeypatch, empty)
    callbacks.on_cfg_denoiser(a1111.on_cfg_denoiser)
    yield SimpleNamespace(shared=shared, callbacks=callbacks, empty=empty)
    PatchSet.undo_all()


def make_job(host, *, adapters=(("faceid", 0),), second_order=False, batch=1):
    unet = cn.FakeUNet()
    made = []
    for kind, seed in adapters:
        adapter = cn.PlugableIPAdapter(is_faceid=kind == "faceid", seed=seed)
        cn.hook_ip_adapter(unet, adapter)
        made.append(adapter)
    return processing_for(host, unet, made, second_order=second_order), unet, made


def processing_for(host, unet, adapters, second_order=False):
    """A `p` whose sampler runs `unet` and whose ControlNet script holds `adapters`."""
    sampler = cn.Sampler(unet, host.callbacks, host.shared, second_order=second_order)
    controlnet = SimpleNamespace(latest_network=SimpleNamespace(
        control_params=[SimpleNamespace(control_model=a) for a in adapters]))
    return SimpleNamespace(sd_model=SimpleNamespace(model=SimpleNamespace(diffusion_model=unet)), sampler=sampler,
                           scripts=SimpleNamespace(alwayson_scripts=[controlnet]), is_hr_pass=False,
                           extra_generation_params={})


def run(p, args, *, batch=1, sigmas=SIGMAS4, pos=None, neg=None, cond_scale=1.0, marked=True):
    """One job through the script's life cycle; returns (final x, denoised per call)."""
    pos = text(1, batch) if pos is None else pos
    neg = text(2, batch) if neg is None else neg
    if marked:
        pos, neg = cn.mark(pos, True), cn.mark(neg, False)
    webui.process(p, args)
    webui.before_sampling(p)
    x = torch.randn(batch, 4, 2, 2, generator=torch.Generator().manual_seed(5)) * sigmas[0]
    conds_list = [[(i, 1.0)] for i in range(batch)]
    out = p.sampler.sample(x, sigmas, pos, neg, conds_list, cond_scale)
    job = p.fastface_job
    webui.postprocess(p, None)
    return out, job


def record_denoiser_inputs(p) -> list:
    """(x, σ) of every CFG-denoiser call of the job, in order."""
    xs = []
    original_forward = p.sampler.model_wrap_cfg.forward

    def spy(x, sigma, *rest):
        xs.append((x.clone(), float(sigma[0])))
        return original_forward(x, sigma, *rest)

    p.sampler.model_wrap_cfg.forward = spy
    return xs


def reference_step(unet, x, sigma, pos, neg, args, step, total, adapters):
    """DCG from three separate single-branch UNet calls (fresh k/v each call)."""
    def call(ctx):
        for a in adapters:
            a.cache = {}
        return unet(x, torch.full((x.shape[0],), sigma), ctx)
    u = call(cn.mark(neg, False))
    e_id = call(cn.mark(neg, True))   # negative text, face applied (positive mark)
    full = call(cn.mark(pos, True))
    alpha, beta = alpha_beta(step, total, args)
    return dcg_x0(x, sigma, u, e_id, full, alpha, beta, rescale_phi(step, total, args))


@pytest.mark.parametrize("batch", [1, 2])
def test_dcg_matches_three_separate_branches(host, batch):
    args = PRESETS["Stylistic"]  # DCG only: rows are independent, so a batched call equals separate ones
    p, unet, adapters = make_job(host)
    pos, neg = text(1, batch), text(2, batch)
    xs = record_denoiser_inputs(p)
    (_, outputs), job = run(p, args.replace(), batch=batch, pos=pos, neg=neg)
    assert job.failed is None, job.failed
    for step, ((x, sigma), got) in enumerate(zip(xs, outputs)):
        expected = reference_step(unet, x, sigma, pos, neg, args, step, 4, adapters)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_rows_per_step_follow_branches_needed(host):
    args = PRESETS["Realistic"]
    for batch in (1, 2):
        p, unet, _ = make_job(host)
        unet.rows_seen.clear()
        _, job = run(p, args, batch=batch)
        expected = [branches_needed(k, 4, args).rows_per_image * batch for k in range(4)]
        assert unet.rows_seen == expected == [2 * batch, 3 * batch, 3 * batch, 2 * batch]
        assert [job.rows[(0, k)] for k in range(4)] == expected


def test_second_order_sampler_schedule_follows_sampler_steps(host):
    args = PRESETS["Stylistic"]
    p, unet, _ = make_job(host, second_order=True)
    steps_seen = []
    original = a1111_dcg.sampler_step

    def record(st, den):
        result = original(st, den)
        steps_seen.append(result)
        return result

    a1111_sampler_step = a1111_dcg.sampler_step
    a1111_dcg.sampler_step = record
    try:
        run(p, args)
    finally:
        a1111_dcg.sampler_step = a1111_sampler_step
    # Heun, 4 steps: two calls per step except the last (Euler): steps 0,0,1,1,2,2,3
    assert [s for s, _ in steps_seen] == [0, 0, 1, 1, 2, 2, 3]
    assert {t for _, t in steps_seen} == {4}
    assert unet.rows_seen == [2, 2, 3, 3, 3, 3, 2]


def test_disabled_is_bit_identical_and_leaves_nothing(host):
    p1, _, _ = make_job(host)
    (x1, _), job = run(p1, PRESETS["Realistic"].replace(enabled=False))
    assert job is None
    p2, _, _ = make_job(host)
    webui_free = p2.sampler.sample(torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(5)) * SIGMAS4[0],
                                   SIGMAS4, cn.mark(text(1), True), cn.mark(text(2), False), [[(0, 1.0)]], 1.0)
    assert torch.equal(x1, webui_free[0])
    assert not PatchSet.live
    assert "callback_state" not in vars(p1.sampler) and "combine_denoised" not in vars(p1.sampler.model_wrap_cfg)


def test_patches_are_undone_after_the_job(host):
    p, unet, _ = make_job(host)
    before = cn.PlugableIPAdapter.__dict__["attn_eval"]
    run(p, PRESETS["Realistic"])
    assert cn.PlugableIPAdapter.__dict__["attn_eval"] is before
    assert not vars(p.sampler).get("callback_state") and "_fastface_pass" not in vars(p.sampler.model_wrap_cfg)
    assert all(not m._forward_pre_hooks for m in unet.modules())
    assert not PatchSet.live


def test_twenty_alternating_jobs_leave_no_patch(host):
    for i in range(20):
        p, unet, _ = make_job(host)
        run(p, PRESETS["Realistic"].replace(enabled=i % 2 == 0), sigmas=[14.6, 1.0, 0.0])
        assert not PatchSet.live and all(not m._forward_pre_hooks for m in unet.modules())


def test_attention_transform_only_faceid_and_down_up(host):
    args = PRESETS["Scale-power only"]   # AM alone: the host CFG is unchanged
    p, _, _ = make_job(host)
    _, job = run(p, args)
    parts = {part for (_, _, part) in job.am_calls}
    assert parts == {"down", "up"}
    assert sum(job.am_calls.values()) == 4 * 2   # 4 steps × (down + up), one call each
    # a non-FaceID adapter is untouched: same pixels as without FastFace
    p_plain, _, _ = make_job(host, adapters=(("plain", 0),))
    (x_ff, _), job = run(p_plain, args)
    assert not job.am_calls
    p_off, _, _ = make_job(host, adapters=(("plain", 0),))
    (x_off, _), _ = run(p_off, args.replace(enabled=False))
    assert torch.equal(x_ff, x_off)
    # and the FaceID adapter's result does change
    p_face_off, _, _ = make_job(host)
    (x_face_off, _), _ = run(p_face_off, args.replace(enabled=False))
    p_face_on, _, _ = make_job(host)
    (x_face_on, _), _ = run(p_face_on, args)
    assert not torch.allclose(x_face_on, x_face_off)


def test_explicit_face_branch_equals_transformed_attention(host):
    """The patched attn_eval returns exactly ip_attention with the part's transform."""
    from fastface.method.attention import ip_attention
    from fastface.method.transforms import transform_for
    args = PRESETS["Realistic"]
    p, unet, (adapter,) = make_job(host)
    seen = []
    original = cn.PlugableIPAdapter._attn_eval_ipadapter

    webui.process(p, args)
    webui.before_sampling(p)
    job = p.fastface_job
    job.current_pass.step, job.current_pass.total = 1, 4
    job.layer_part = "up"
    q = torch.randn(3, cn.HEADS, 4, cn.C // cn.HEADS)
    hidden = torch.randn(3, 4, cn.C)
    emb = adapter.ipadapter.cond_emb.expand(3, -1, -1)
    got = adapter.attn_eval(hidden, q, emb, cn.HEADS, cn.C // cn.HEADS,
                            lambda e: adapter.call_ip("1_to_k_ip", e, q.device), lambda e: adapter.call_ip("1_to_v_ip", e, q.device))
    k = adapter.ipadapter.to_kvs["1_to_k_ip"](emb).view(3, -1, cn.HEADS, cn.C // cn.HEADS).transpose(1, 2)
    v = adapter.ipadapter.to_kvs["1_to_v_ip"](emb).view(3, -1, cn.HEADS, cn.C // cn.HEADS).transpose(1, 2)
    expected = ip_attention(q, k, v, transform_for(args, "up", 1, 4)).transpose(1, 2).reshape(3, -1, cn.C)
    torch.testing.assert_close(got, expected)
    webui.postprocess(p, None)
    assert cn.PlugableIPAdapter._attn_eval_ipadapter is original


def test_changing_batch_composition_survives_controlnet_cache(host):
    """Steps go 2 → 3 → 3 → 2 rows; stock ControlNet's k/v cache would break (shape error)."""
    p, unet, (adapter,) = make_job(host)
    _, job = run(p, PRESETS["Stylistic"])
    assert job.failed is None and unet.rows_seen == [2, 3, 3, 2]
    # the same composition change without FastFace's cache handling fails, as the docs report
    unet2 = cn.FakeUNet()
    adapter2 = cn.PlugableIPAdapter()
    cn.hook_ip_adapter(unet2, adapter2)
    unet2(torch.randn(2, 4, 2, 2), torch.ones(2), cn.mark(text(1, 2), True))
    with pytest.raises(RuntimeError):
        unet2(torch.randn(3, 4, 2, 2), torch.ones(3), cn.mark(text(1, 3), True))


def test_prompt_longer_than_negative_pads_the_id_rows(host):
    """Different token lengths: A1111 runs the cond block (prompt + id rows) and the uncond rows as
    separate calls; the id rows are padded with the empty-prompt chunk like `pad_cond`."""
    args = PRESETS["Stylistic"]
    p, unet, adapters = make_job(host)
    pos, neg = text(1, 1, tokens=2 * TOKENS), text(2)
    xs = []
    original_forward = p.sampler.model_wrap_cfg.forward
    p.sampler.model_wrap_cfg.forward = lambda x, sigma, *rest: (xs.append((x.clone(), float(sigma[0]))),
                                                                original_forward(x, sigma, *rest))[1]
    (_, outputs), job = run(p, args, pos=pos, neg=neg)
    assert job.failed is None
    # per step: [cond (+ id) call, uncond call]; boosted steps 1 and 2 carry the id row in the cond call
    assert unet.rows_seen == [1, 1, 2, 1, 2, 1, 1, 1]
    padded_neg = torch.cat([neg, host.empty], dim=1)
    for step, ((x, sigma), got) in enumerate(zip(xs, outputs)):
        def call(ctx):
            for a in adapters:
                a.cache = {}
            return unet(x, torch.full((1,), sigma), ctx)
        alpha, beta = alpha_beta(step, 4, args)
        e_id = call(cn.mark(padded_neg if step in (1, 2) else neg, True))
        expected = dcg_x0(x, sigma, call(cn.mark(neg, False)), e_id, call(cn.mark(pos, True)),
                          alpha, beta, rescale_phi(step, 4, args))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_without_controlnet_marks_dcg_runs_without_face_and_says_so(host):
    p, unet, _ = make_job(host, adapters=())
    _, job = run(p, PRESETS["Realistic"], marked=False)
    assert job.failed is None
    assert any("no FaceID unit" in n for n in job.notes)
    assert unet.rows_seen == [2, 2, 2, 2]   # no id rows without a face: ε_id is ε_uncond
    assert "FastFace note" in job.infotext_params()


def test_and_prompts_skip_dcg_with_a_note(host):
    p, unet, _ = make_job(host)
    pos = cn.mark(text(1, 2), True)
    webui.process(p, PRESETS["Stylistic"])
    webui.before_sampling(p)
    x = torch.randn(1, 4, 2, 2) * 14.6
    p.sampler.sample(x, SIGMAS4, pos, cn.mark(text(2), False), [[(0, 0.5), (1, 0.5)]], 1.0)
    job = p.fastface_job
    webui.postprocess(p, None)
    assert any("AND prompts" in n for n in job.notes)
    assert unet.rows_seen == [3, 3, 3, 3] and job.failed is None


def test_internal_error_turns_fastface_off_and_the_image_still_comes_out(host, monkeypatch):
    p, unet, _ = make_job(host)
    monkeypatch.setattr(a1111_dcg, "dcg_x0", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    (x, _), job = run(p, PRESETS["Stylistic"])
    assert torch.isfinite(x).all()
    assert job.failed and "boom" in job.failed
    assert not PatchSet.live
    assert "internal error" in job.infotext_params()["FastFace note"]


def test_skipped_uncond_uses_alpha_one(host):
    host.shared.opts.skip_early_cond = 0.6
    p, unet, _ = make_job(host)
    _, job = run(p, PRESETS["Stylistic"])
    assert job.failed is None
    assert any("skipped the negative prompt" in n for n in job.notes)


def test_timestep_sampler_eps_combination_and_real_step_count(host):
    """DDIM-style samplers return ε and run len(timesteps) − 1 steps: 4 requested → 3 run."""
    from fastface.method.guidance import dcg_eps
    args = PRESETS["Stylistic"]
    p, unet, adapters = make_job(host)
    p.sampler = cn.TimestepSampler(unet, host.callbacks, host.shared)
    pos, neg = text(1), text(2)
    webui.process(p, args)
    webui.before_sampling(p)
    seen = []
    den = p.sampler.model_wrap_cfg
    original = den.forward
    den.forward = lambda x, t, *rest: (seen.append((x.clone(), t.clone())), original(x, t, *rest))[1]
    x = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(3))
    _, outputs = p.sampler.sample_timesteps(x, 4, cn.mark(pos, True), cn.mark(neg, False), [[(0, 1.0)]])
    job = p.fastface_job
    webui.postprocess(p, None)
    assert job.failed is None
    assert unet.rows_seen == [2, 3, 2]   # 3 real steps: boosted in the middle only
    for step, ((xx, t), got) in enumerate(zip(seen, outputs)):
        def call(ctx):
            for a in adapters:
                a.cache = {}
            return unet(xx, t / 1000.0, ctx)
        alpha, beta = alpha_beta(step, 3, args)
        expected = dcg_eps(call(cn.mark(neg, False)), call(cn.mark(neg, True)), call(cn.mark(pos, True)),
                           alpha, beta, rescale_phi(step, 3, args))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_ddim_cfg_pp_renoises_with_the_real_uncond_on_every_step(host):
    """A1111's DDIM CFG++ reads the uncond rows' output on every step: FastFace keeps them the real
    uncond (negative text, no face) — never the id-only rows in the uncond slot — and says so."""
    from fastface.hosts.common import CFG_PP_NOTE
    args = PRESETS["Realistic"]
    p, unet, adapters = make_job(host)
    p.sampler = cn.TimestepSampler(unet, host.callbacks, host.shared)
    p.sampler.func = cn.ddim_cfgpp_like
    pos, neg = text(1), text(2)
    webui.process(p, args)
    webui.before_sampling(p)
    den = p.sampler.model_wrap_cfg
    seen, unconds = [], []
    original = den.forward

    def spy(x, t, *rest):
        out = original(x, t, *rest)
        seen.append((x.clone(), t.clone()))
        unconds.append(den.last_noise_uncond)
        return out

    den.forward = spy
    x = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(3))
    p.sampler.sample_timesteps(x, 4, cn.mark(pos, True), cn.mark(neg, False), [[(0, 1.0)]])
    job = p.fastface_job
    webui.postprocess(p, None)
    assert job.failed is None and CFG_PP_NOTE in job.notes
    assert unet.rows_seen == [3, 3, 3]   # uncond + id-only + full on each of the 3 real steps
    for (xx, t), got in zip(seen, unconds):
        for a in adapters:
            a.cache = {}
        torch.testing.assert_close(got, unet(xx, t / 1000.0, cn.mark(neg, False)), rtol=1e-5, atol=1e-5)


def test_softmask_pools_per_image(host, monkeypatch):
    """Rows [cond, id, uncond] × 2 images: the softmask's groups are the image of each row."""
    p, unet, (adapter,) = make_job(host)
    p.batch_size = 2
    seen = []
    real = transforms.transform_for   # what the job's TransformCache calls (once per key)
    monkeypatch.setattr(transforms, "transform_for", lambda *a, **k: (seen.append(a[4]), real(*a, **k))[1])
    webui.process(p, PRESETS["Realistic portrait"])
    webui.before_sampling(p)
    job = p.fastface_job
    job.layer_part = "down"
    q, hidden = torch.randn(6, cn.HEADS, 4, cn.C // cn.HEADS), torch.randn(6, 4, cn.C)
    emb = adapter.ipadapter.cond_emb.expand(6, -1, -1)
    adapter.attn_eval(hidden, q, emb, cn.HEADS, cn.C // cn.HEADS,
                      lambda e: adapter.call_ip("1_to_k_ip", e, q.device), lambda e: adapter.call_ip("1_to_v_ip", e, q.device))
    webui.postprocess(p, None)
    # groups as a period (row r pools with r' ≡ r mod 2): no tensor is made per call
    assert seen and (torch.arange(6) % seen[0]).tolist() == [0, 1, 0, 1, 0, 1]


def test_error_while_arranging_rows_leaves_the_rows_consistent(host, monkeypatch):
    """A failure half way through the row surgery must not hand A1111 mismatched rows."""
    p, unet, _ = make_job(host)
    monkeypatch.setattr(a1111_dcg, "_pad_tokens", lambda *a, **k: (_ for _ in ()).throw(ValueError("pad")))
    (x, _), job = run(p, PRESETS["Stylistic"])
    assert job.failed and "pad" in job.failed
    assert torch.isfinite(x).all()
    assert unet.rows_seen == [2, 2, 2, 2]   # stock rows from the failing step on
