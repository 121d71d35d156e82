"""fastface.hosts.forge against stand-ins of Forge 2 (dfdcbab6), see tests/forge_standins.py.

Values, not shapes: the sampled trajectory is compared with a reference that evaluates the three
DCG branches one by one and combines them with `dcg_x0`; the face attention with an explicit
softmax + transform; pass-through cases bit for bit with Forge's own patch.
"""
import copy
import traceback
import sys
import types

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastface.hosts import forge
from fastface.hosts.forge import attention as forge_attention, batching as forge_batching, dcg as forge_dcg
from fastface.hosts.forge import internals as forge_internals, state as forge_state
from fastface.method.attention import ip_attention
from fastface.method.guidance import dcg_x0
from fastface.method.transforms import transform_for
from fastface.hosts.common import Job, PatchSet
from fastface.presets import PRESETS
from fastface.method.schedule import alpha_beta, branches_needed, rescale_phi

import forge_standins as fs

STYLISTIC = PRESETS["Stylistic"]            # DCG, no attention transform
REALISTIC = PRESETS["Realistic"]            # DCG + scale-power
PORTRAIT = PRESETS["Realistic portrait"]    # DCG + softmask
SIGMAS = {1: [3.0, 0.0], 2: [3.0, 1.0, 0.0], 4: [3.0, 1.5, 0.7, 0.3, 0.0],
          8: [3.0, 2.2, 1.5, 1.0, 0.7, 0.45, 0.3, 0.15, 0.0]}


@pytest.fixture(autouse=True)
def float64_standins():
    """The stand-ins (UNet, IP-Adapter, text encoder) compute in float64 for this module's tests.

    Most tests here compare FastFace's one batched UNet call per step with the branches evaluated
    in separate calls: a different evaluation order. In fp32 the two differ by the CPU's matmul
    blocking alone (up to 4e-4 on values of ~40 after 8 steps on a Xeon), which no tolerance fixed
    in advance can bound on every CPU and thread count; in float64 that noise is ~1e-12, while a
    real mistake (a wrong row, label, weight or branch) moves the result by 1e-2 or more. FastFace's
    own code keeps its dtype rules (the face branch is computed in fp32, as on every host), so the
    tolerances still leave room for its fp32 rounding."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(default)


@pytest.fixture
def forge_env(monkeypatch):
    """Forge 2's `backend.sampling.sampling_function` and `modules.prompt_parser` in sys.modules."""
    backend = types.ModuleType("backend")
    sampling = types.ModuleType("backend.sampling")
    sampling_function = types.ModuleType("backend.sampling.sampling_function")
    sampling_function.calc_cond_uncond_batch = fs.calc_cond_uncond_batch
    backend.sampling, sampling.sampling_function = sampling, sampling_function
    modules = sys.modules.get("modules") or types.ModuleType("modules")
    parser = fs.make_prompt_parser(fs.encode_text)
    for name, module in (("backend", backend), ("backend.sampling", sampling),
                         ("backend.sampling.sampling_function", sampling_function),
                         ("modules", modules), ("modules.prompt_parser", parser)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(modules, "prompt_parser", parser, raising=False)
    yield types.SimpleNamespace(calc=sampling_function, parser=parser)
    PatchSet.undo_all()


class Run:
    """One txt2img job: after-LoRA patcher → ControlNet IP-Adapter clone → FastFace → sampler."""

    def __init__(self, args, *, face=True, cfg=1.0, negative="ugly", batch=1, steps=4, second_order=False,
                 prior=None, fastface=True, adapter=None, post_cfg=None, control=None, wrapper=None,
                 patcher=fs.UnetPatcher, patch_class=fs.CrossAttentionPatch, weight=0.8):
        self.model = fs.KModel(fs.ToyUNet())
        base = patcher(self.model)
        self.patch_class, self.weight = patch_class, weight
        self.p = fs.Processing(base, ["a face"] * batch, [negative] * batch, cfg_scale=cfg, steps=steps)
        self.p.firstpass_steps = steps * (2 if second_order else 1)   # setup_conds: sampler total steps
        self.adapter = adapter or fs.Adapter(faceid=face)
        self.cfg, self.steps, self.batch = cfg, steps, batch
        self.args = args
        self.prior, self.post_cfg = prior, post_cfg
        self.control, self.wrapper = control, wrapper
        self.job = Job(args=args, host="Forge", patches=PatchSet("test job")) if fastface else None
        self.p.fastface_job = self.job
        self.sampler = fs.Sampler(self.p, [forge.on_cfg_denoiser], second_order=second_order)
        self.p.sampler = self.sampler
        self.controlnet()

    def controlnet(self):
        """What Forge does before every process_before_every_sampling: reset, then ControlNet."""
        objects = self.p.sd_model.forge_objects = self.p.sd_model.forge_objects_after_applying_lora.shallow_copy()
        objects.unet = fs.install_ip_adapter(objects.unet, self.adapter, weight=self.weight, patch_class=self.patch_class)
        if self.prior is not None:
            objects.unet.set_model_sampler_cfg_function(self.prior)
        if self.post_cfg is not None:
            objects.unet.set_model_sampler_post_cfg_function(self.post_cfg)
        if self.control is not None:
            objects.unet.controlnet_linked_list = self.control
        if self.wrapper is not None:
            objects.unet.model_options["model_function_wrapper"] = self.wrapper
        self.controlnet_unet = objects.unet
        return objects.unet

    def start(self):
        forge.start_pass(self.job, self.p)
        return self

    def sample(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(self.batch, 4, 4, 4, generator=g) * 3.0
        sigmas = torch.tensor(SIGMAS[self.steps])
        with torch.no_grad():
            return self.sampler.sample(x, sigmas, self.p.c, self.p.uc, self.cfg)

    def end(self):
        if self.job is not None:
            forge.end_job(self.job, self.p)


def reference(run, x, args):
    """Euler with the three branches evaluated one at a time (uncond: negative text labelled
    UNCOND; id-only: negative text labelled COND; full: prompt labelled COND) and `dcg_x0`."""
    km = fs.KModel(run.model.diffusion_model)
    options = run.controlnet_unet.model_options["transformer_options"]
    negative = torch.stack([fs.encode_text(t) for t in run.p.negative_prompts])
    sigmas = torch.tensor(SIGMAS[run.steps])

    def predict(context, label, x, s):
        return km.apply_model(x, s, c_crossattn=context, transformer_options=dict(options, cond_or_uncond=[label] * 1, sigmas=s))

    steps = len(sigmas) - 1
    with torch.no_grad():
        for i in range(steps):
            s = sigmas[i] * torch.ones(x.shape[0])
            a, b = alpha_beta(i, steps, args)
            phi = rescale_phi(i, steps, args)
            den = dcg_x0(x, s, predict(negative, 1, x, s), predict(negative, 0, x, s), predict(run.p.c, 0, x, s), a, b, phi)
            x = x + (x - den) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    return x


def initial_x(batch, seed=0):
    return torch.randn(batch, 4, 4, 4, generator=torch.Generator().manual_seed(seed)) * 3.0


# -- DCG --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", [1.0, 2.5])
@pytest.mark.parametrize("batch", [1, 2])
def test_dcg_trajectory_equals_dcg_x0_of_the_three_branches(forge_env, cfg, batch):
    run = Run(STYLISTIC, cfg=cfg, batch=batch).start()
    got = run.sample()
    expected = reference(run, initial_x(batch), STYLISTIC)
    run.end()
    assert run.job.failed is None
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-5)
    # the stock result is far away: the comparison can fail
    stock = Run(STYLISTIC, cfg=cfg, batch=batch, fastface=False).sample()
    assert not torch.allclose(stock, expected, atol=1e-3)


def test_id_only_rows_are_the_negative_text_labelled_cond_in_one_call_per_step(forge_env):
    run = Run(STYLISTIC, negative="blurry").start()
    run.sample()
    run.end()
    negative = fs.encode_text("blurry")
    positive = fs.encode_text("a face")
    # every step reads the id-only branch (the rescale is on by default), in the step's only call:
    # inside the UNet its rows carry the negative text labelled COND, so the IP-Adapter gives them the face
    assert len(run.model.calls) == 4
    for call in run.model.calls:
        by_label = lambda label: [call["context"][i] for i, l in enumerate(call["labels"]) if l == label]  # noqa: E731
        assert any(torch.equal(row, negative) for row in by_label(0))
        assert any(torch.equal(row, positive) for row in by_label(0))
        assert not any(torch.equal(row, positive) for row in by_label(1))


def test_cfg1_uncond_is_a_real_negative_prediction(forge_env):
    run = Run(STYLISTIC, cfg=1.0, negative="blurry").start()
    assert run.p.uc is None                     # Forge built no negative conditioning at CFG 1
    run.sample()
    run.end()
    uncond_calls = [c for c in run.model.calls if 1 in c["labels"]]
    assert uncond_calls, "no uncond rows at CFG 1"
    negative = fs.encode_text("blurry")[None]
    for call in uncond_calls:
        rows = call["context"][[i for i, label in enumerate(call["labels"]) if label == 1]]
        assert torch.equal(rows, negative)
    assert forge_env.parser.encoded == [["blurry"]]
    assert not run.job.notes  # the usual case for distilled models: logged, not an infotext note


def test_cfg1_negative_prompt_changes_the_image_with_fastface_only(forge_env):
    a = Run(STYLISTIC, negative="blurry").start().sample()
    b = Run(STYLISTIC, negative="cartoon, lowres").start().sample()
    assert not torch.allclose(a, b, atol=1e-4)
    off_a = Run(STYLISTIC, negative="blurry", fastface=False).sample()
    off_b = Run(STYLISTIC, negative="cartoon, lowres", fastface=False).sample()
    assert torch.equal(off_a, off_b)            # stock Forge ignores the negative prompt at CFG 1


@pytest.mark.parametrize("steps", [1, 2, 4])
@pytest.mark.parametrize("second_order", [False, True])
@pytest.mark.parametrize("face", [True, False])
def test_unet_rows_per_step_follow_branches_needed(forge_env, steps, second_order, face):
    batch = 2
    run = Run(STYLISTIC, steps=steps, batch=batch, second_order=second_order, face=face).start()
    run.sample()
    run.end()
    for k in range(steps):
        calls = 2 if second_order and k < steps - 1 else 1
        need = branches_needed(k, steps, STYLISTIC)
        per_image = need.rows_per_image if face else 1 + int(need.uncond or need.id_only)
        assert run.job.rows[(0, k)] == calls * batch * per_image, (k, dict(run.job.rows))
    assert sum(run.job.rows.values()) == sum(c["rows"] for c in run.model.calls)
    assert run.sampler.callback_steps == list(range(steps))


def test_uncond_rows_kept_when_a_post_cfg_function_reads_them(forge_env):
    seen = []

    def post_cfg(args):
        seen.append(args["uncond_denoised"].abs().sum().item())
        return args["denoised"]

    run = Run(STYLISTIC, post_cfg=post_cfg).start()
    run.sample()
    run.end()
    assert len(seen) == 4 and all(v > 0 for v in seen)   # never a zero uncond prediction


# -- AM ---------------------------------------------------------------------------------------------
def _attention_inputs(rows=4, tokens=16, width=8, seed=3):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(rows, tokens, width, generator=g)
    k = torch.randn(rows, 4, width, generator=g)
    v = torch.randn(rows, 4, width, generator=g)
    options = {"cond_or_uncond": [0, 1], "sigmas": torch.tensor([1.0, 1.0]), "n_heads": 2, "dim_head": 4,
               "block": ("input", 1), "block_index": 0, "original_shape": [2, 4, 4, 4]}
    return q, k, v, options


def _patch(adapter, weight=0.8, weight_type="original"):
    g = torch.Generator().manual_seed(11)
    return fs.CrossAttentionPatch(weight, adapter, 0, torch.randn(1, 4, 8, generator=g), torch.randn(1, 4, 8, generator=g),
                                  weight_type, None, 1e9, 0.0)


def _job(args, step=1, total=4):
    job = Job(args=args, host="Forge", patches=PatchSet("am test"))
    job.current_pass = forge_state.ForgePass(index=0, is_hires=False, step=step, total=total)
    return job


def _explicit(patch, index, q, k, v, options, transform, weight_type="original"):
    rows, tokens, width = q.shape
    heads, d = options["n_heads"], width // options["n_heads"]
    adapter, weight = patch.ipadapters[index], patch.weights[index]
    to_k, to_v = adapter.ip_layers.to_kvs[patch.k_key], adapter.ip_layers.to_kvs[patch.v_key]
    per = rows // len(options["cond_or_uncond"])
    pick = lambda f, i: f(patch.conds[index] if i == 0 else patch.unconds[index]).repeat(per, 1, 1)  # noqa: E731
    ip_k = torch.cat([pick(to_k, i) for i in options["cond_or_uncond"]])
    ip_v = torch.cat([pick(to_v, i) for i in options["cond_or_uncond"]])
    if weight_type == "linear":
        ip_k, ip_v = ip_k * weight, ip_v * weight
    split = lambda t: t.reshape(rows, -1, heads, d).transpose(1, 2)  # noqa: E731
    out = ip_attention(split(q), split(ip_k), split(ip_v), transform).transpose(1, 2).reshape(rows, tokens, width)
    return out if weight_type == "linear" else out * weight


@pytest.mark.parametrize("args", [REALISTIC, PORTRAIT], ids=["scale-power", "softmask"])
@pytest.mark.parametrize("weight_type", ["original", "linear"])
def test_faceid_patch_equals_explicit_attention_with_the_transform(args, weight_type):
    q, k, v, options = _attention_inputs()
    patch = _patch(fs.Adapter(faceid=True), weight_type=weight_type)
    job = _job(args)
    got = forge_attention.FaceAttn2Patch(patch, job)(q, k, v, options)
    transform = transform_for(args, "down", 1, 4, groups=torch.tensor([0, 1, 0, 1]))
    expected = fs.attention(q, k, v, 2) + _explicit(patch, 0, q, k, v, options, transform, weight_type)
    assert job.failed is None
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, patch(q, k, v, options), atol=1e-4)   # the transform did something
    assert job.am_calls == {(0, 1, "down"): 1}


def test_mixed_patch_transforms_only_the_faceid_adapter():
    q, k, v, options = _attention_inputs()
    plain, face = fs.Adapter(faceid=False, seed=5), fs.Adapter(faceid=True, seed=6)
    patch = _patch(plain, weight=0.5)
    patch.set_new_condition(0.8, face, 0, torch.randn(1, 4, 8), torch.randn(1, 4, 8), "original", None, 1e9, 0.0)
    job = _job(REALISTIC)
    got = forge_attention.FaceAttn2Patch(patch, job)(q, k, v, options)
    transform = transform_for(REALISTIC, "down", 1, 4)
    plain_out = fs.attention(q, *(torch.cat([f(c).repeat(2, 1, 1) for c in (patch.conds[0], patch.unconds[0])])
                                  for f in (plain.ip_layers.to_kvs["1_to_k_ip"], plain.ip_layers.to_kvs["1_to_v_ip"])), 2) * 0.5
    expected = fs.attention(q, k, v, 2) + plain_out + _explicit(patch, 1, q, k, v, options, transform)
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("case", ["fastface off", "am off", "not faceid", "mid block", "no pass", "outside sigma range"])
def test_attn2_wrapper_is_the_original_patch_otherwise(case):
    q, k, v, options = _attention_inputs()
    args = {"fastface off": REALISTIC.replace(enabled=False), "am off": STYLISTIC}.get(case, REALISTIC)
    patch = _patch(fs.Adapter(faceid=case != "not faceid"))
    job = _job(args)
    if case == "mid block":
        options["block"] = ("middle", 0)
    if case == "no pass":
        job.current_pass = None
    if case == "outside sigma range":
        patch.sigma_start[0], patch.sigma_end[0] = 0.5, 0.1
    got = forge_attention.FaceAttn2Patch(patch, job)(q, k, v, options)
    assert torch.equal(got, patch(q, k, v, options))
    assert not job.am_calls


def test_wrapper_deepcopy_shares_the_adapter_and_owns_its_lists():
    adapter = fs.Adapter(faceid=True, big=1000)
    patch = _patch(adapter)
    assert copy.deepcopy(patch).ipadapters[0] is not adapter     # Forge's trap: a bare patch copies it
    wrapper = forge_attention.FaceAttn2Patch(patch, _job(REALISTIC))
    clone = copy.deepcopy({"attn2": {("input", 1): wrapper}})["attn2"][("input", 1)]
    assert clone is not wrapper and clone.inner is not patch
    assert clone.inner.ipadapters[0] is adapter and clone.inner.conds[0] is patch.conds[0]
    clone.set_new_condition(0.5, fs.Adapter(faceid=False), 0, torch.zeros(1, 4, 8), torch.zeros(1, 4, 8))
    assert len(clone.ipadapters) == 2 and len(patch.ipadapters) == 1
    assert not hasattr(wrapper, "to")          # Forge's model_patches_to must leave it in place


def test_start_pass_does_not_copy_the_adapter_or_touch_controlnets_patcher(forge_env):
    adapter = fs.Adapter(faceid=True, big=1000)
    run = Run(REALISTIC, adapter=adapter)
    source = run.controlnet_unet
    options_before = source.model_options
    attn2_before = dict(source.model_options["transformer_options"]["patches_replace"]["attn2"])
    run.start()
    ours = run.p.sd_model.forge_objects.unet
    assert ours is not source and ours.model is source.model
    for key, value in ours.model_options["transformer_options"]["patches_replace"]["attn2"].items():
        assert isinstance(value, forge_attention.FaceAttn2Patch)
        assert value.inner.ipadapters[0] is adapter
        assert type(value.inner) is fs.CrossAttentionPatch
    assert source.model_options is options_before
    assert source.model_options["transformer_options"]["patches_replace"]["attn2"] == attn2_before
    assert all(type(v) is fs.CrossAttentionPatch for v in attn2_before.values())
    assert "sampler_cfg_function" not in source.model_options
    run.end()
    assert run.p.sd_model.forge_objects.unet is source        # undone with the job


# -- idempotency, hires, chaining, failures -----------------------------------------------------------
def _fastface_entries(unet):
    options = unet.model_options
    return (sum(forge_batching.ours(f) for f in options.get("conditioning_modifiers", [])),
            sum(forge_batching.ours(f) for f in options.get("sampler_pre_cfg_function", [])))


def test_double_start_pass_is_idempotent(forge_env):
    once = Run(REALISTIC).start()
    expected = once.sample()
    twice = Run(REALISTIC).start()
    forge.start_pass(twice.job, twice.p)       # again, on top of its own clone (no reset)
    unet = twice.p.sd_model.forge_objects.unet
    assert _fastface_entries(unet) == (1, 1)
    assert unet.model_options["sampler_cfg_function"]._fastface_prior is None
    for value in unet.model_options["transformer_options"]["patches_replace"]["attn2"].values():
        assert type(value.inner) is fs.CrossAttentionPatch
    assert twice.job.passes == 1
    got = twice.sample()
    assert torch.equal(got, expected)
    assert dict(twice.job.rows) == dict(once.job.rows) and twice.job.am_calls == once.job.am_calls


def test_hires_pass_called_twice_keeps_one_pass_index(forge_env):
    run = Run(REALISTIC.replace(hires=True)).start()
    run.sample()
    run.p.is_hr_pass = True
    run.sampler = run.p.sampler = fs.Sampler(run.p, [forge.on_cfg_denoiser])
    forge.start_pass(run.job, run.p)           # Forge 2 L1510: before the reset
    run.controlnet()                            # L1518: reset + ControlNet again
    forge.start_pass(run.job, run.p)           # L1522
    assert run.job.passes == 2 and run.job.current_pass.index == 1
    assert _fastface_entries(run.p.sd_model.forge_objects.unet) == (1, 1)
    run.sample()
    assert {pas for pas, _ in run.job.rows} == {0, 1}
    run.end()


def test_hires_pass_left_alone_when_the_option_is_off(forge_env):
    run = Run(REALISTIC.replace(hires=False)).start()
    run.p.is_hr_pass = True
    run.controlnet()
    forge.start_pass(run.job, run.p)
    assert run.p.sd_model.forge_objects.unet is run.controlnet_unet
    assert run.job.current_pass is None and any("hires" in n for n in run.job.notes)


def test_existing_cfg_function_is_chained(forge_env):
    calls = []

    def plain_cfg(args):   # another extension doing ordinary CFG in the slot
        calls.append(args["cond_scale"])
        return args["uncond"] + (args["cond"] - args["uncond"]) * args["cond_scale"]

    for cfg in (1.0, 3.0):
        run = Run(STYLISTIC, cfg=cfg, prior=plain_cfg).start()
        got = run.sample()
        run.end()
        assert torch.allclose(got, reference(run, initial_x(1), STYLISTIC), atol=1e-4, rtol=1e-5)
        assert any("chained" in n for n in run.job.notes)
    assert len(calls) == 8

    def clamp_cfg(args):   # a thresholding one: its effect must survive
        return (args["uncond"] + (args["cond"] - args["uncond"]) * args["cond_scale"]).clamp(-0.05, 0.05)

    clamped = Run(STYLISTIC, prior=clamp_cfg).start().sample()
    free = Run(STYLISTIC).start().sample()
    assert not torch.allclose(clamped, free, atol=1e-3)


def test_error_in_the_id_branch_falls_back_to_stock_without_raising(forge_env):
    run = Run(STYLISTIC).start()
    run.job.current_pass.batched = False        # the separate id-only call (see the wrapper's test below)
    run.job.current_pass.calc = lambda *a: (_ for _ in ()).throw(RuntimeError("boom"))
    got = run.sample()
    stock = Run(STYLISTIC, fastface=False).sample()
    assert run.job.failed and "Forge DCG" in run.job.failed
    assert torch.allclose(got, stock, atol=1e-5)
    assert run.p.sd_model.forge_objects.unet is run.controlnet_unet   # stock UNet for the other steps


def test_error_in_the_face_attention_falls_back_to_the_original_patch(monkeypatch):
    q, k, v, options = _attention_inputs()
    patch = _patch(fs.Adapter(faceid=True))
    job = _job(REALISTIC)
    monkeypatch.setattr(forge_attention, "ip_attention", lambda *a: (_ for _ in ()).throw(ValueError("bad")))
    got = forge_attention.FaceAttn2Patch(patch, job)(q, k, v, options)
    assert torch.equal(got, patch(q, k, v, options))
    assert job.failed and "face attention" in job.failed


def test_error_during_set_up_leaves_forge_alone(forge_env, monkeypatch):
    run = Run(REALISTIC)
    monkeypatch.setattr(fs.UnetPatcher, "clone", lambda self: (_ for _ in ()).throw(MemoryError("no")))
    forge.start_pass(run.job, run.p)           # must not raise
    assert run.job.failed and "set-up" in run.job.failed
    assert run.p.sd_model.forge_objects.unet is run.controlnet_unet


def test_gen1_import_path_and_missing_backend(forge_env, monkeypatch):
    monkeypatch.setitem(sys.modules, "backend.sampling.sampling_function", None)   # import fails
    assert forge_internals.calc_cond_uncond_batch() is None
    samplers = types.ModuleType("ldm_patched.modules.samplers")
    samplers.calc_cond_uncond_batch = fs.calc_cond_uncond_batch
    ldm = types.ModuleType("ldm_patched")
    ldm_modules = types.ModuleType("ldm_patched.modules")
    ldm.modules, ldm_modules.samplers = ldm_modules, samplers
    for name, module in (("ldm_patched", ldm), ("ldm_patched.modules", ldm_modules), ("ldm_patched.modules.samplers", samplers)):
        monkeypatch.setitem(sys.modules, name, module)
    assert forge_internals.calc_cond_uncond_batch() is fs.calc_cond_uncond_batch
    run = Run(STYLISTIC).start()
    assert torch.allclose(run.sample(), reference(run, initial_x(1), STYLISTIC), atol=1e-5)
    monkeypatch.setitem(sys.modules, "ldm_patched.modules.samplers", None)
    bare = Run(STYLISTIC).start()
    assert torch.equal(bare.sample(), Run(STYLISTIC, fastface=False).sample())
    assert any("calc_cond_uncond_batch" in n for n in bare.job.notes) and bare.job.failed is None


def test_callback_ignores_jobs_of_other_hosts(forge_env):
    job = Job(args=REALISTIC, host="A1111")
    job.current_pass = object()                 # an A1111 PassState
    p = types.SimpleNamespace(fastface_job=job)
    params = fs.CFGDenoiserParams(torch.zeros(1), None, torch.ones(1), 0, 4, None, None, types.SimpleNamespace(p=p, step=0))
    forge.on_cfg_denoiser(params)
    assert params.text_uncond is None and job.failed is None
    registered = []
    forge.register_callbacks(types.SimpleNamespace(on_cfg_denoiser=registered.append))
    assert registered == [forge.on_cfg_denoiser]


def test_disabled_dcg_leaves_the_cfg_slot_alone(forge_env):
    run = Run(PRESETS["Scale-power only"]).start()
    options = run.p.sd_model.forge_objects.unet.model_options
    assert "sampler_cfg_function" not in options and _fastface_entries(run.p.sd_model.forge_objects.unet) == (0, 0)
    run.sample()
    run.end()
    assert run.job.failed is None and sum(run.job.am_calls.values()) > 0
    assert forge_env.parser.encoded == []       # no negative encoding without DCG


# -- one UNet call per step: the id-only rows ride in Forge's own batch ------------------------------
def _compiled(run, context):
    """What `sampling_function` hands `calc_cond_uncond_batch` (L332-357): one entry, with the
    patcher's ControlNet attached."""
    entries = fs.compile_conditions(context)
    if run.control is not None:
        for entry in entries:
            entry["control"] = run.control
    return entries


def _reference_setup(run, args):
    st = run.job.current_pass
    assert isinstance(st, forge_state.ForgePass), "call the reference before run.end()"
    transformer_options = run.p.sd_model.forge_objects.unet.model_options["transformer_options"]
    negative = torch.stack([fs.encode_text(t) for t in run.p.negative_prompts])
    return st, transformer_options, negative, fs.KModel(run.model.diffusion_model), torch.tensor(SIGMAS[run.steps])


def reference_calls(run, args, uncond_kept=False, cfg_pp=False):
    """The Forge host before batching: per step three separate `calc_cond_uncond_batch` calls —
    uncond (negative text in the uncond slot), id-only (negative text in the cond slot), full
    (prompt in the cond slot) — through FastFace's attn2 wrappers at that step (AM) but without its
    UNet wrapper, combined with `dcg_x0` (which gets the full branch in the uncond's place on
    steps with α = 1, as the host always did: its weight 1 − α is 0; `uncond_kept`: the real one,
    as when a post-cfg function reads the uncond). `cfg_pp`: Euler CFG++'s step instead of
    Euler's (renoise with the real uncond; x₀ itself at σ = 0)."""
    st, transformer_options, negative, km, sigmas = _reference_setup(run, args)
    options = {"transformer_options": transformer_options}
    x = initial_x(run.batch)
    steps = len(sigmas) - 1
    with torch.no_grad():
        for i in range(steps):
            st.step, st.total = i, steps
            s = sigmas[i] * torch.ones(run.batch)
            uncond = fs.calc_cond_uncond_batch(km, [], _compiled(run, negative), x, s, options)[1]
            id_only = fs.calc_cond_uncond_batch(km, _compiled(run, negative), None, x, s, options)[0]
            full = fs.calc_cond_uncond_batch(km, _compiled(run, run.p.c), None, x, s, options)[0]
            if not (uncond_kept or branches_needed(i, steps, args).uncond):
                uncond = full
            a, b = alpha_beta(i, steps, args)
            den = dcg_x0(x, s, uncond, id_only, full, a, b, rescale_phi(i, steps, args))
            if cfg_pp:
                x = den if sigmas[i + 1] == 0 else den + sigmas[i + 1] * (x - uncond) / sigmas[i]
            else:
                x = x + (x - den) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    return x


def reference_one_call(run, args):
    """The branches a step needs as chunks of ONE UNet call built by hand (uncond labelled UNCOND,
    full and id-only labelled COND): the softmask's min-max then pools the branches of one image,
    as on A1111 and in the authors' code (fastface_reference.md, "Joint min-max")."""
    st, transformer_options, negative, km, sigmas = _reference_setup(run, args)
    x = initial_x(run.batch)
    steps = len(sigmas) - 1
    with torch.no_grad():
        for i in range(steps):
            st.step, st.total = i, steps
            s = sigmas[i] * torch.ones(run.batch)
            need = branches_needed(i, steps, args)
            chunks = ([("uncond", negative, 1)] if need.uncond else []) + [("full", run.p.c, 0)] \
                + ([("id", negative, 0)] if need.id_only else [])
            labels = [label for _, _, label in chunks]
            options = dict(transformer_options, cond_or_uncond=labels, sigmas=s)
            out = km.apply_model(torch.cat([x] * len(chunks)), torch.cat([s] * len(chunks)),
                                 c_crossattn=torch.cat([c for _, c, _ in chunks]), transformer_options=options)
            pred = dict(zip([name for name, _, _ in chunks], out.chunk(len(chunks))))
            full = pred["full"]
            a, b = alpha_beta(i, steps, args)
            den = dcg_x0(x, s, pred.get("uncond", full), pred.get("id", full), full, a, b, rescale_phi(i, steps, args))
            x = x + (x - den) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    return x


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("steps", [1, 2, 4, 8])
@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_one_unet_call_per_step_for_every_preset(forge_env, preset, steps, cfg):
    run = sample_one_job(PRESETS[preset], steps, cfg, batch=2)
    assert run.job.failed is None
    assert_one_call_per_step_with_the_documented_rows(run, PRESETS[preset], steps, cfg, batch=2)
    assert '"calls":{' in run.job.trace_json()


def sample_one_job(args, steps, cfg, batch, **host):
    run = Run(args, steps=steps, cfg=cfg, batch=batch, **host).start()
    run.sample()
    run.end()
    return run


def assert_one_call_per_step_with_the_documented_rows(run, args, steps, cfg, batch):
    """One UNet call per step, holding the README table's rows (Forge's own at CFG 1 without DCG)."""
    for k in range(steps):
        assert run.job.calls[(0, k)] == forge_dcg.unet_calls_per_evaluation(k, steps, args) == 1, (k, dict(run.job.calls))
        per_image = branches_needed(k, steps, args).rows_per_image if args.dcg else (1 if cfg == 1.0 else 2)
        assert run.job.rows[(0, k)] == batch * per_image, (k, dict(run.job.rows))
    assert len(run.model.calls) == steps


@pytest.mark.parametrize("preset", ["Stylistic", "Realistic"])
@pytest.mark.parametrize("steps", [1, 2, 4, 8])
@pytest.mark.parametrize("cfg, batch", [(1.0, 1), (2.5, 2)])
def test_batched_dcg_equals_three_separate_calls(forge_env, preset, steps, cfg, batch):
    args = PRESETS[preset]
    run = Run(args, steps=steps, cfg=cfg, batch=batch).start()
    got = run.sample()
    calls = dict(run.job.calls)              # before the reference adds its own calls
    expected = reference_calls(run, args)
    run.end()
    assert run.job.failed is None and not run.job.notes
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-5)
    assert len(run.model.calls) == steps


@pytest.mark.parametrize("cfg, batch", [(1.0, 1), (2.5, 2)])
def test_softmask_pools_the_branches_of_one_image_in_the_one_call(forge_env, cfg, batch):
    run = Run(PORTRAIT, cfg=cfg, batch=batch).start()
    got = run.sample()
    expected = reference_one_call(run, PORTRAIT)
    run.end()
    assert run.job.failed is None
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-5)
    assert len(run.model.calls) == 4


def test_three_rows_in_one_call_when_a_post_cfg_function_reads_the_uncond(forge_env):
    post_unconds = []

    def post_cfg(args):
        post_unconds.append(args["uncond_denoised"])
        return args["denoised"]

    run = Run(REALISTIC, cfg=2.5, batch=2, post_cfg=post_cfg).start()
    got = run.sample()
    calls = dict(run.job.calls)              # before the reference adds its own calls
    expected = reference_calls(run, REALISTIC, uncond_kept=True)
    # the post-cfg function saw the real negative prediction of step 0, not the id-only rows
    run.job.current_pass.step = 0
    negative = fs.compile_conditions(torch.stack([fs.encode_text("ugly")] * 2))
    options = {"transformer_options": run.p.sd_model.forge_objects.unet.model_options["transformer_options"]}
    with torch.no_grad():
        first = fs.calc_cond_uncond_batch(fs.KModel(run.model.diffusion_model), [], negative, initial_x(2),
                                          torch.full((2,), 3.0), options)[1]
    run.end()
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-5)
    assert torch.allclose(post_unconds[0], first, atol=1e-5)
    for k in range(4):   # the uncond kept for the post-cfg function, the id-only rows appended
        assert calls[(0, k)] == 1
    assert [c["rows"] for c in run.model.calls] == [2 * 3] * 4
    assert [c["labels"] for c in run.model.calls] == [[1, 0, 0]] * 4


@pytest.mark.parametrize("weighted", [False, True], ids=["balanced", "cond-uncond weighting"])
def test_controlnet_signal_of_the_id_rows(forge_env, weighted):
    control = fs.ControlNet(positive_weight=1.0, negative_weight=0.2) if weighted else fs.ControlNet()
    run = Run(REALISTIC, cfg=2.5, batch=2, control=control).start()
    got = run.sample()
    calls = dict(run.job.calls)              # before the reference adds its own calls
    expected = reference_calls(run, REALISTIC)
    run.end()
    assert run.job.failed is None
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-5)
    without = Run(REALISTIC, cfg=2.5, batch=2).start().sample()
    assert not torch.allclose(got, without, atol=1e-3)        # the ControlNet signal matters here
    for k in range(4):
        documented = forge_dcg.unet_calls_per_evaluation(k, 4, REALISTIC, batched=not weighted)
        assert calls[(0, k)] == documented == (2 if weighted else 1)
    assert any("ControlNet" in n for n in run.job.notes) == weighted


def test_another_model_function_wrapper_is_chained(forge_env):
    seen = []

    def tiled(apply_model, args):   # e.g. MultiDiffusion: sees the call FastFace makes
        seen.append(list(args["cond_or_uncond"]))
        return apply_model(args["input"], args["timestep"], **args["c"])

    run = Run(REALISTIC, cfg=2.5, wrapper=tiled).start()
    got = run.sample()
    calls = dict(run.job.calls)              # before the reference adds its own calls
    expected = reference_calls(run, REALISTIC)
    run.end()
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-5)
    # 4 steps: unboosted steps relabel [uncond, cond] as cond; boosted steps append a cond chunk
    assert seen[:4] == [[0, 0], [1, 0, 0], [1, 0, 0], [0, 0]]


def test_forge_splitting_the_batch_keeps_the_id_rows_with_the_negative_chunk(forge_env):
    run = Run(REALISTIC, cfg=2.5, batch=2).start()
    run.p.sd_model.forge_objects.unet.model_options["max_chunks"] = 1   # the stand-in's memory check
    got = run.sample()
    calls = dict(run.job.calls)              # before the reference adds its own calls
    expected = reference_calls(run, REALISTIC)
    run.end()
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-5)
    assert all(calls[(0, k)] == 2 for k in range(4))   # Forge's own two calls, none more


def test_id_rows_take_their_own_call_when_the_wrapper_is_bypassed(forge_env):
    run = Run(STYLISTIC).start()
    run.p.sd_model.forge_objects.unet.model_options["model_function_wrapper"] = \
        lambda apply_model, args: apply_model(args["input"], args["timestep"], **args["c"])
    got = run.sample()
    calls = dict(run.job.calls)              # before the reference adds its own calls
    expected = reference_calls(run, STYLISTIC)
    run.end()
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-5)
    assert any("could not join" in n for n in run.job.notes)
    assert all(calls[(0, k)] == 2 for k in range(4))


def test_error_in_the_unet_wrapper_falls_back_to_stock(forge_env, monkeypatch):
    boom = lambda *a: (_ for _ in ()).throw(RuntimeError("boom"))  # noqa: E731
    monkeypatch.setattr(forge_batching, "_relabelled", boom)
    monkeypatch.setattr(forge_batching, "_with_id_rows", boom)
    run = Run(STYLISTIC).start()
    got = run.sample()
    stock = Run(STYLISTIC, fastface=False).sample()
    assert run.job.failed and "UNet wrapper" in run.job.failed
    assert torch.allclose(got, stock, atol=1e-5)
    assert run.p.sd_model.forge_objects.unet is run.controlnet_unet


# -- no host-device sync in FastFace's Forge code ---------------------------------------------------
class HostReads(TorchDispatchMode):
    """Records every read of a tensor value by the host (`.item()`, `float()`, `int()`, `bool()`,
    `.tolist()` all dispatch `aten._local_scalar_dense`; on a GPU each is a device sync) together
    with the innermost frame of FastFace or of the Forge stand-ins that made it."""

    def __init__(self):
        super().__init__()
        self.ours, self.forge = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            for frame in reversed(traceback.extract_stack()[:-1]):   # without this method's frame
                path = frame.filename.replace("\\", "/")
                if "/fastface/" in path:
                    self.ours.append(f"{path.rsplit('/', 2)[-2]}/{path.rsplit('/', 1)[-1]}:{frame.lineno} {frame.line}")
                    break
                if path.endswith("forge_standins.py"):
                    self.forge.append(f"{path.rsplit('/', 1)[-1]}:{frame.lineno}")
                    break
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("preset", ["Stylistic", "Realistic", "Realistic portrait", "Softmask only"])
@pytest.mark.parametrize("cfg, window", [(1.0, "full"), (2.5, "full"), (2.5, "partial")])
def test_no_host_read_of_a_tensor_in_fastface_while_sampling(forge_env, preset, cfg, window):
    args = PRESETS[preset]
    run = Run(args, cfg=cfg, batch=2)
    if window == "partial":   # a FaceID unit from 10 % to 90 %: σ window (2.5, 0.2)
        for patch in run.controlnet_unet.model_options["transformer_options"]["patches_replace"]["attn2"].values():
            patch.sigma_start[0], patch.sigma_end[0] = 2.5, 0.2
    run.start()
    reads = HostReads()
    with reads:
        run.sample()
    run.end()
    assert run.job.failed is None
    assert reads.ours == [], reads.ours
    assert reads.forge, "the detector saw none of Forge's own reads (the sampler's, the IP-Adapter's)"


def test_partial_window_applies_the_transform_inside_and_nothing_outside(forge_env):   # forge_env: cleanup
    q, k, v, options = _attention_inputs()
    patch = _patch(fs.Adapter(faceid=True))
    patch.sigma_start[0], patch.sigma_end[0] = 2.0, 0.5           # σ = 1.0 is inside
    job = _job(REALISTIC)
    got = forge_attention.FaceAttn2Patch(patch, job)(q, k, v, options)
    transform = transform_for(REALISTIC, "down", 1, 4, groups=2)
    expected = fs.attention(q, k, v, 2) + _explicit(patch, 0, q, k, v, options, transform)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, patch(q, k, v, options), atol=1e-4)
    outside = dict(options, sigmas=torch.tensor([3.0, 3.0]))      # same layer, σ above the start
    assert torch.equal(forge_attention.FaceAttn2Patch(patch, job)(q, k, v, outside), patch(q, k, v, outside))
