"""Minimal stand-ins for the parts of Forge that `fastface.hosts.forge` relies on.

Written from the documented contracts of lllyasviel/stable-diffusion-webui-forge at commit
dfdcbab6 (2.0.1v1.10.1); every class / function cites the Forge file and lines it mirrors. They
are deliberately small: only the behaviour FastFace depends on (order of hooks, labels, copy
semantics, call signatures), computed with our own code.
"""
from __future__ import annotations

import copy
import math
import types
from dataclasses import dataclass

import torch
import torch.nn.functional as F

COND, UNCOND = 0, 1


# -- backend/patcher/base.py + unet.py (dfdcbab6) ---------------------------------------------------
class UnetPatcher:
    """Mirrors `ModelPatcher` (backend/patcher/base.py L51-84, L132-180) and `UnetPatcher`
    (backend/patcher/unet.py L19-35, L113-119): the model is shared between clones,
    `model_options` is deep-copied by `clone()` (patch objects included), the cfg function is a
    single slot, modifiers and pre-cfg functions are lists."""

    def __init__(self, model):
        self.model = model
        self.model_options = {"transformer_options": {}}
        self.controlnet_linked_list = None
        self.extra_concat_condition = None
        self.clones_made = 0

    def clone(self):  # unet.py L26-35
        n = type(self)(self.model)
        n.model_options = copy.deepcopy(self.model_options)
        n.controlnet_linked_list = self.controlnet_linked_list
        n.extra_concat_condition = self.extra_concat_condition
        self.clones_made += 1
        return n

    def set_model_sampler_cfg_function(self, fn, disable_cfg1_optimization=False):  # base.py L132-138
        self.model_options["sampler_cfg_function"] = fn
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True

    def set_model_sampler_post_cfg_function(self, fn, disable_cfg1_optimization=False):  # base.py L37-41, L140
        self.model_options["sampler_post_cfg_function"] = self.model_options.get("sampler_post_cfg_function", []) + [fn]
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True

    def add_conditioning_modifier(self, fn):  # unet.py L81-89, L113
        self.model_options.setdefault("conditioning_modifiers", []).append(fn)

    def add_sampler_pre_cfg_function(self, fn):  # unet.py L117
        self.model_options.setdefault("sampler_pre_cfg_function", []).append(fn)

    def add_controlnet_conditioning_modifier(self, modifier):  # unet.py L161-162 (append_transformer_option)
        to = self.model_options["transformer_options"]
        to["controlnet_conditioning_modifiers"] = to.get("controlnet_conditioning_modifiers", []) + [modifier]

    def sample_inner(self, model, x, timestep, uncond, cond, cond_scale, model_options):
        """The host's sampling after the conditioning modifiers (Forge 2: `sampling_function_inner`)."""
        return sampling_function_inner(model, x, timestep, uncond, cond, cond_scale, model_options)

    def set_model_attn2_replace(self, patch, block_name, number, transformer_index=None):  # base.py L15-34, L179
        to = dict(self.model_options["transformer_options"])
        replace = dict(to.get("patches_replace", {}))
        attn2 = dict(replace.get("attn2", {}))
        key = (block_name, number) if transformer_index is None else (block_name, number, transformer_index)
        attn2[key] = patch
        replace["attn2"] = attn2
        to["patches_replace"] = replace
        self.model_options["transformer_options"] = to


# -- backend/sampling/condition.py L91-101 ----------------------------------------------------------
def compile_conditions(cond):
    """A1111 tensor → Forge condition list (one entry holding the whole batch); None stays None."""
    if cond is None:
        return None
    return [dict(cross_attn=cond, model_conds=dict(c_crossattn=cond))]


# -- backend/sampling/sampling_function.py (dfdcbab6) -----------------------------------------------
def calc_cond_uncond_batch(model, cond, uncond, x_in, timestep, model_options):
    """Mirrors L154-289: every `cond` entry is a COND (0) chunk, every `uncond` entry an UNCOND (1)
    chunk; chunks with equal context shapes run in one model call, in *reverse* list order
    (L179-189: `to_batch_temp.reverse()`, so [uncond, cond] for one entry each), unless
    `max_chunks` (a stand-in for the free-memory check L193-213) splits them. Per call the
    transformer options get `cond_or_uncond`, `sigmas`, `cond_mark` and `cond_indices` /
    `uncond_indices` (L253-259); a ControlNet computes its signal from them *before*
    `model_function_wrapper` runs (L261-273). COND outputs are averaged by strength into one
    prediction, UNCOND likewise (L276-289)."""
    out_cond, count_cond = torch.zeros_like(x_in), torch.ones_like(x_in) * 1e-37
    out_uncond, count_uncond = torch.zeros_like(x_in), torch.ones_like(x_in) * 1e-37
    to_run = [(entry, COND) for entry in cond]
    if uncond is not None:
        to_run += [(entry, UNCOND) for entry in uncond]
    while to_run:
        shape = to_run[0][0]["model_conds"]["c_crossattn"].shape
        fits = [i for i, item in enumerate(to_run) if item[0]["model_conds"]["c_crossattn"].shape == shape]
        fits.reverse()
        fits = fits[:model_options.get("max_chunks", len(fits))]
        batch = [to_run[i] for i in fits]
        to_run = [item for i, item in enumerate(to_run) if i not in fits]
        labels = [label for _, label in batch]
        transformer_options = dict(model_options.get("transformer_options", {}))
        transformer_options["cond_or_uncond"] = labels[:]
        transformer_options["sigmas"] = timestep
        transformer_options["cond_mark"] = torch.tensor([float(l) for l in labels for _ in range(timestep.shape[0])])
        b = timestep.shape[0]
        transformer_options["cond_indices"] = [i * b + j for i, l in enumerate(labels) if l == COND for j in range(b)]
        transformer_options["uncond_indices"] = [i * b + j for i, l in enumerate(labels) if l == UNCOND for j in range(b)]
        c = dict(c_crossattn=torch.cat([e["model_conds"]["c_crossattn"] for e, _ in batch]),
                 transformer_options=transformer_options)
        x = torch.cat([x_in] * len(batch))
        t = torch.cat([timestep] * len(batch))
        control = batch[0][0].get("control")
        if control is not None:
            control.transformer_options = transformer_options
            c["control"] = control.get_control(x, t, dict(c), len(batch))
            c["control_model"] = control
        if "model_function_wrapper" in model_options:
            output = model_options["model_function_wrapper"](model.apply_model, {"input": x, "timestep": t, "c": c, "cond_or_uncond": labels})
        else:
            output = model.apply_model(x, t, **c)
        for (entry, label), chunk in zip(batch, output.chunk(len(batch))):
            mult = entry.get("strength", 1.0)
            if label == COND:
                out_cond += chunk * mult
                count_cond += mult
            else:
                out_uncond += chunk * mult
                count_uncond += mult
    return out_cond / count_cond, out_uncond / count_uncond


class ControlNet:
    """The contract of a ControlNet in `controlnet_linked_list` (backend/patcher/controlnet.py
    L292-340, weighting L84-150): `get_control(x, t, cond, batched_number)` first runs the
    `controlnet_conditioning_modifiers` of its transformer options (L295-296: InstantID's puts the
    face tokens in `c_crossattn`), then returns per-row signals {"middle": [tensor]} computed from
    the call's rows and context; with an advanced weighting the signal of each row is scaled by the
    positive or the negative weight according to `transformer_options["cond_mark"]` (L138).
    Records the context each call saw (`seen`)."""

    def __init__(self, positive_weight=None, negative_weight=None):
        self.previous_controlnet = None
        self.transformer_options = {}
        self.positive_advanced_weighting = None if positive_weight is None else {"middle": [positive_weight]}
        self.negative_advanced_weighting = None if negative_weight is None else {"middle": [negative_weight]}
        self.seen = []

    def get_control(self, x, t, cond, batched_number):
        for modifier in self.transformer_options.get("controlnet_conditioning_modifiers", []):
            x, t, cond, batched_number = modifier(self, x, t, cond, batched_number)
        mark = self.transformer_options.get("cond_mark")
        self.seen.append(dict(marks=mark.tolist() if mark is not None else None,
                              context=cond["c_crossattn"].detach().clone()))
        context = cond["c_crossattn"].mean(dim=(1, 2)).reshape(-1, 1, 1, 1)
        signal = 0.05 * torch.tanh(x + context)
        if self.positive_advanced_weighting is not None or self.negative_advanced_weighting is not None:
            mark = self.transformer_options["cond_mark"].reshape(-1, 1, 1, 1)
            pos = (self.positive_advanced_weighting or {"middle": [1.0]})["middle"][0]
            neg = (self.negative_advanced_weighting or {"middle": [1.0]})["middle"][0]
            signal = signal * (pos * (1.0 - mark) + neg * mark)
        return {"input": [None], "middle": [signal], "output": []}   # unet.py apply_control: None = no signal


def sampling_function_inner(model, x, timestep, uncond, cond, cond_scale, model_options):
    """Mirrors L292-322: cfg1 optimisation → pre-cfg functions (6-tuple) → calc_cond_uncond_batch
    → `x − sampler_cfg_function(args)` or plain CFG → post-cfg functions."""
    if math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization", False):
        uncond_ = None
    else:
        uncond_ = uncond
    for fn in model_options.get("sampler_pre_cfg_function", []):
        model, cond, uncond_, x, timestep, model_options = fn(model, cond, uncond_, x, timestep, model_options)
    cond_pred, uncond_pred = calc_cond_uncond_batch(model, cond, uncond_, x, timestep, model_options)
    if "sampler_cfg_function" in model_options:
        args = {"cond": x - cond_pred, "uncond": x - uncond_pred, "cond_scale": cond_scale, "timestep": timestep,
                "input": x, "sigma": timestep, "cond_denoised": cond_pred, "uncond_denoised": uncond_pred,
                "model": model, "model_options": model_options}
        result = x - model_options["sampler_cfg_function"](args)
    else:
        result = uncond_pred + (cond_pred - uncond_pred) * cond_scale
    for fn in model_options.get("sampler_post_cfg_function", []):
        result = fn({"denoised": result, "cond": cond, "uncond": uncond, "model": model, "uncond_denoised": uncond_pred,
                     "cond_denoised": cond_pred, "sigma": timestep, "model_options": model_options, "input": x})
    return result, cond_pred, uncond_pred


def sampling_function(unet_patcher, x, sigma, text_cond, text_uncond, cond_scale):
    """Mirrors L325-363: compile the A1111 conditions, attach the patcher's ControlNet to every
    entry (L352-357), run the `conditioning_modifiers` (8-tuple), then `sampling_function_inner`."""
    model, options = unet_patcher.model, unet_patcher.model_options
    uncond, cond = compile_conditions(text_uncond), compile_conditions(text_cond)
    if unet_patcher.controlnet_linked_list is not None:
        for entry in cond + (uncond or []):
            entry["control"] = unet_patcher.controlnet_linked_list
    seed = 0
    for modifier in options.get("conditioning_modifiers", []):
        model, x, sigma, uncond, cond, cond_scale, options, seed = modifier(model, x, sigma, uncond, cond, cond_scale, options, seed)
    return unet_patcher.sample_inner(model, x, sigma, uncond, cond, cond_scale, options)


# -- modules/sd_samplers_cfg_denoiser.py + modules/sd_samplers_common.py (dfdcbab6) -----------------
@dataclass
class CFGDenoiserParams:  # modules/script_callbacks.py L45-69
    x: torch.Tensor
    image_cond: object
    sigma: torch.Tensor
    sampling_step: int
    total_sampling_steps: int
    text_cond: object
    text_uncond: object
    denoiser: object = None


class CFGDenoiser(torch.nn.Module):
    """Mirrors `CFGDenoiser(torch.nn.Module).forward` (L34, L156-228): call the cfg_denoiser
    callbacks with the un-batched inputs, read x / sigma / conds back, sample through the UNet
    patcher that `p.sd_model.forge_objects.unet` holds *now*, count `self.step` per call (L222).
    The samplers call the module (`__call__` runs `self.forward`). `steps` / `total_steps` are
    set by `launch_sampling` (sd_samplers_common.py L274-276)."""

    def __init__(self, p, callbacks):
        super().__init__()
        self.p = p
        self.callbacks = callbacks
        self.step = 0
        self.steps = None
        self.total_steps = None

    def forward(self, x, sigma, cond, uncond, cond_scale):
        params = CFGDenoiserParams(x, None, sigma, 0, self.steps, cond, uncond, self)
        for callback in self.callbacks:
            callback(params)
        denoised, _, _ = sampling_function(self.p.sd_model.forge_objects.unet, params.x, params.sigma,
                                           params.text_cond, params.text_uncond, cond_scale)
        self.step += 1
        return denoised


class Sampler:
    """A k-diffusion sampler as Forge drives it: `callback_state` is passed as the callback
    (sd_samplers_kdiffusion.py L238) and k-diffusion calls it after the first model call of
    every step (k_diffusion/sampling.py `sample_euler` L120, `sample_heun` L189-215)."""

    def __init__(self, p, callbacks, second_order=False):
        self.model_wrap_cfg = CFGDenoiser(p, callbacks)
        self.second_order = second_order
        self.callback_steps = []

    def callback_state(self, d):  # sd_samplers_common.py L265-272
        self.callback_steps.append(d["i"])

    def sample(self, x, sigmas, cond, uncond, cond_scale):
        steps = len(sigmas) - 1
        den = self.model_wrap_cfg
        den.steps, den.total_steps = steps, steps * 2 if self.second_order else steps  # L17-21, L274-276
        for i in range(steps):
            s = sigmas[i] * x.new_ones(x.shape[0])
            denoised = den(x, s, cond, uncond, cond_scale)
            d = (x - denoised) / sigmas[i]
            self.callback_state({"i": i, "x": x, "denoised": denoised})
            dt = sigmas[i + 1] - sigmas[i]
            if not self.second_order or sigmas[i + 1] == 0:
                x = x + d * dt
            else:
                x2 = x + d * dt
                denoised2 = den(x2, sigmas[i + 1] * x.new_ones(x.shape[0]), cond, uncond, cond_scale)
                d2 = (x2 - denoised2) / sigmas[i + 1]
                x = x + (d + d2) / 2 * dt
        return x


# -- backend/nn/unet.py + backend/modules/k_model.py (dfdcbab6) -------------------------------------
def attention(q, k, v, heads):
    """`attention_function(q, k, v, heads)` (backend/attention.py): (B, L, h·d) in and out."""
    b, _, width = q.shape
    d = width // heads
    qh, kh, vh = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(qh, kh, vh).transpose(1, 2).reshape(b, -1, width)


class ToyUNet(torch.nn.Module):
    """A tiny eps-prediction 'UNet' with one cross-attention per block key. The attn2 dispatch
    mirrors `BasicTransformerBlock._forward` (backend/nn/unet.py L183-275): `extra_options` are the
    transformer options without the patch dicts plus `n_heads` / `dim_head`; a replacement is
    looked up as (block, id, index) then (block, id) and gets projected q, k, v; its output goes
    through `to_out`. The UNet forward sets `block`, `block_index` and `original_shape` (L696-753)."""

    BLOCKS = (("input", 1), ("middle", 0), ("output", 3))

    def __init__(self, channels=4, context_dim=8, width=8, heads=2, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.heads = heads
        self.layers = torch.nn.ModuleList()
        for _ in self.BLOCKS:
            layer = torch.nn.ModuleDict({
                "proj_in": torch.nn.Linear(channels, width), "to_q": torch.nn.Linear(width, width, bias=False),
                "to_k": torch.nn.Linear(context_dim, width, bias=False), "to_v": torch.nn.Linear(context_dim, width, bias=False),
                "to_out": torch.nn.Linear(width, channels)})
            for p in layer.parameters():
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=g) * 0.5)
            self.layers.append(layer)

    def forward(self, x, timesteps, context=None, control=None, transformer_options={}, **kwargs):
        b, c, h, w = x.shape
        tokens = x.reshape(b, c, h * w).transpose(1, 2).contiguous()
        extra = {k: v for k, v in transformer_options.items() if k not in ("patches", "patches_replace")}
        replace = transformer_options.get("patches_replace", {}).get("attn2", {})
        eps = torch.zeros_like(tokens)
        for block, layer in zip(self.BLOCKS, self.layers):
            options = dict(extra, block=block, block_index=0, original_shape=[b, c, h, w],
                           n_heads=self.heads, dim_head=layer["to_q"].out_features // self.heads)
            n = layer["proj_in"](tokens + eps)
            q, k, v = layer["to_q"](n), layer["to_k"](context), layer["to_v"](context)
            key = (block[0], block[1], 0) if (block[0], block[1], 0) in replace else block
            out = replace[key](q, k, v, options) if key in replace else attention(q, k, v, self.heads)
            eps = eps + layer["to_out"](out)
        eps = eps.transpose(1, 2).reshape(b, c, h, w) + 0.01 * timesteps.reshape(-1, 1, 1, 1)
        if control is not None:   # the middle block adds the ControlNet signal (unet.py apply_control)
            eps = eps + control["middle"][0]
        return eps


class KModel:
    """`KModel.apply_model` (backend/modules/k_model.py L25-46) for an eps model: the UNet gets x
    and the context, the result is the denoised x₀ = x − σ·ε. Records every call."""

    def __init__(self, diffusion_model):
        self.diffusion_model = diffusion_model
        self.calls = []

    def apply_model(self, x, t, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        self.calls.append(dict(rows=x.shape[0], labels=list(transformer_options.get("cond_or_uncond", [])),
                               context=c_crossattn.detach().clone(), options=transformer_options))
        eps = self.diffusion_model(x, t, context=c_crossattn, control=control, transformer_options=transformer_options)
        return x - t.reshape(-1, 1, 1, 1) * eps


# -- extensions-builtin/sd_forge_ipadapter/lib_ipadapter/IPAdapterPlus.py (dfdcbab6) ----------------
class ProjModelFaceIdPlus(torch.nn.Module):
    """Only the class name matters: Forge builds FaceID-Plus adapters with it (L101, L325-332)."""


class ImageProjModel(torch.nn.Module):
    """The plain (non-face) IP-Adapter projection (L135, L298-304)."""


class Resampler(torch.nn.Module):
    """resampler.py L82-101: InstantID's projection reads the 512-d face embedding (IPAdapterPlus.py
    L341-352), IP-Adapter Plus's CLIP features (L306-322); only `proj_in` matters here."""

    def __init__(self, embedding_dim=512):
        super().__init__()
        self.proj_in = torch.nn.Linear(embedding_dim, 4, bias=False)


class Adapter(torch.nn.Module):
    """`IPAdapter` (L270-296): `image_proj_model` plus `ip_layers.to_kvs[f"{2n+1}_to_k_ip"]`."""

    def __init__(self, faceid=True, context_dim=8, width=8, layers=3, seed=1, big=0, instant_id=False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.is_instant_id = instant_id   # L284: set on every IPAdapter (False for FaceID and Plus)
        self.image_proj_model = Resampler() if instant_id else ProjModelFaceIdPlus() if faceid else ImageProjModel()
        self.ip_layers = torch.nn.Module()
        self.ip_layers.to_kvs = torch.nn.ModuleDict()
        for number in range(layers):
            for kind in ("k", "v"):
                lin = torch.nn.Linear(context_dim, width, bias=False)
                with torch.no_grad():
                    lin.weight.copy_(torch.randn(lin.weight.shape, generator=g))
                self.ip_layers.to_kvs[f"{number * 2 + 1}_to_{kind}_ip"] = lin
        self.ballast = torch.nn.Parameter(torch.zeros(big)) if big else None  # stands for the 1 GB


class CrossAttentionPatch:
    """The call contract of `CrossAttentionPatch` (L369-524): parallel lists per adapter
    (`set_new_condition` appends), k/v keys from `number`, `__call__(q, k, v, extra_options)` =
    text attention + per adapter (skipped outside [sigma_end, sigma_start]) the face attention with
    k/v of the cond or uncond embedding picked per chunk by `extra_options["cond_or_uncond"]`,
    repeated over the images of a chunk; "linear" scales k and v, "original" the output."""

    def __init__(self, weight, ipadapter, number, cond, uncond, weight_type="original", mask=None,
                 sigma_start=0.0, sigma_end=1.0, unfold_batch=False):
        self.weights, self.ipadapters, self.conds, self.unconds = [weight], [ipadapter], [cond], [uncond]
        self.number = number
        self.weight_type, self.masks = [weight_type], [mask]
        self.sigma_start, self.sigma_end, self.unfold_batch = [sigma_start], [sigma_end], [unfold_batch]
        self.k_key = f"{number * 2 + 1}_to_k_ip"
        self.v_key = f"{number * 2 + 1}_to_v_ip"

    def set_new_condition(self, weight, ipadapter, number, cond, uncond, weight_type="original", mask=None,
                          sigma_start=0.0, sigma_end=1.0, unfold_batch=False):
        for name, value in (("weights", weight), ("ipadapters", ipadapter), ("conds", cond), ("unconds", uncond),
                            ("masks", mask), ("weight_type", weight_type), ("sigma_start", sigma_start),
                            ("sigma_end", sigma_end), ("unfold_batch", unfold_batch)):
            getattr(self, name).append(value)

    @staticmethod
    def output_weighted(out_ip, weight):
        """Forge 2 (L479) and Forge Classic 1f95d717 (IPAdapterPlus.py L622): the weight once."""
        return out_ip * weight

    def __call__(self, q, k, v, extra_options):
        labels = extra_options["cond_or_uncond"]
        sigma = float(extra_options["sigmas"][0]) if "sigmas" in extra_options else 999999999.9
        heads = extra_options["n_heads"]
        per_chunk = q.shape[0] // len(labels)
        out = attention(q, k, v, heads)
        for weight, cond, uncond, adapter, weight_type, start, end in zip(
                self.weights, self.conds, self.unconds, self.ipadapters, self.weight_type, self.sigma_start, self.sigma_end):
            if sigma > start or sigma < end:
                continue
            to_k, to_v = adapter.ip_layers.to_kvs[self.k_key], adapter.ip_layers.to_kvs[self.v_key]
            ks = (to_k(cond).repeat(per_chunk, 1, 1), to_k(uncond).repeat(per_chunk, 1, 1))
            vs = (to_v(cond).repeat(per_chunk, 1, 1), to_v(uncond).repeat(per_chunk, 1, 1))
            ip_k = torch.cat([ks[i] for i in labels])
            ip_v = torch.cat([vs[i] for i in labels])
            if weight_type.startswith("linear"):
                ip_k, ip_v = ip_k * weight, ip_v * weight
            out_ip = attention(q, ip_k, ip_v, heads)
            if weight_type.startswith("original"):
                out_ip = self.output_weighted(out_ip, weight)
            out = out + out_ip
        return out


def install_ip_adapter(unet, adapter, weight=0.8, cond=None, uncond=None, sigma_start=1e9, sigma_end=0.0,
                       patch_class=CrossAttentionPatch):
    """What the built-in ControlNet's IP-Adapter unit does (IPAdapterPlus.py L732-785): clone the
    patcher and put one patch per attn2 key, numbered in block order; returns the clone. InstantID
    (`adapter.is_instant_id`): 16 tokens, uncond = Resampler(0) (not zero, L363-366), and the
    conditioning modifier that gives every ControlNet unit the face tokens as its context on COND
    rows, Resampler(0) on UNCOND rows (L734-741)."""
    work = unet.clone()
    g = torch.Generator().manual_seed(7)
    tokens = 16 if getattr(adapter, "is_instant_id", False) else 4
    cond = torch.randn(1, tokens, 8, generator=g) if cond is None else cond
    uncond = torch.randn(1, tokens, 8, generator=g) if uncond is None else uncond
    if getattr(adapter, "is_instant_id", False):
        def modifier(cnet, x_noisy, t, cond_, batched_number):
            cond_mark = cond_["transformer_options"]["cond_mark"][:, None, None].to(cond_["c_crossattn"])  # cond is 0
            cond_["c_crossattn"] = cond * (1.0 - cond_mark) + uncond * cond_mark
            return x_noisy, t, cond_, batched_number

        work.add_controlnet_conditioning_modifier(modifier)
    to = work.model_options["transformer_options"]
    attn2 = to.setdefault("patches_replace", {}).setdefault("attn2", {})
    for number, key in enumerate(ToyUNet.BLOCKS):
        if key in attn2:
            attn2[key].set_new_condition(weight, adapter, number, cond, uncond, "original", None, sigma_start, sigma_end)
        else:
            attn2[key] = patch_class(weight, adapter, number, cond, uncond, "original", None, sigma_start, sigma_end)
    return work


# -- modules/prompt_parser.py (dfdcbab6) ------------------------------------------------------------
class ScheduledPromptConditioning:  # L21-25 (namedtuple end_at_step, cond)
    def __init__(self, end_at_step, cond):
        self.end_at_step, self.cond = end_at_step, cond


def make_prompt_parser(encode):
    """A `modules.prompt_parser` stand-in: `SdConditioning` (L139-156) is a list of prompts with
    width/height/is_negative_prompt; `get_learned_conditioning(model, prompts, steps, ...)` (L158)
    returns one schedule per prompt; `reconstruct_cond_batch(c, step)` (L294-312) stacks the
    conditioning active at `step`."""
    module = types.ModuleType("modules.prompt_parser")

    class SdConditioning(list):
        def __init__(self, prompts, is_negative_prompt=False, width=None, height=None, copy_from=None,
                     distilled_cfg_scale=None):
            super().__init__(prompts)
            self.is_negative_prompt, self.width, self.height = is_negative_prompt, width, height

    def get_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
        module.encoded.append(list(prompts))
        return [[ScheduledPromptConditioning(steps, encode(text))] for text in prompts]

    def reconstruct_cond_batch(c, current_step):
        # the first schedule entry still active at `current_step`, else the first one
        return torch.stack([next((s.cond for s in schedule if current_step <= s.end_at_step), schedule[0].cond)
                            for schedule in c])

    module.SdConditioning = SdConditioning
    module.get_learned_conditioning = get_learned_conditioning
    module.reconstruct_cond_batch = reconstruct_cond_batch
    module.encoded = []
    return module


def encode_text(text: str, tokens=4, dim=8) -> torch.Tensor:
    """A deterministic stand-in for the text encoder: one (tokens, dim) embedding per prompt."""
    seed = sum((i + 1) * ord(ch) for i, ch in enumerate(text)) + 12345
    return torch.randn(tokens, dim, generator=torch.Generator().manual_seed(seed))


# -- modules/processing.py / backend/diffusion_engine/base.py (dfdcbab6) ----------------------------
class ForgeObjects:  # backend/diffusion_engine/base.py L7-20
    def __init__(self, unet):
        self.unet = unet

    def shallow_copy(self):
        return ForgeObjects(self.unet)


class SdModel:
    def __init__(self, unet):
        self.forge_objects_after_applying_lora = ForgeObjects(unet)
        self.forge_objects = self.forge_objects_after_applying_lora.shallow_copy()


class Processing:
    """The few attributes of `StableDiffusionProcessingTxt2Img` FastFace reads. At CFG 1
    `setup_conds` leaves `uc = None` (processing.py L499-501)."""

    def __init__(self, unet, prompts, negative_prompts, cfg_scale=1.0, steps=4):
        self.sd_model = SdModel(unet)
        self.prompts, self.negative_prompts = list(prompts), list(negative_prompts)
        self.width = self.height = 32
        self.steps = self.firstpass_steps = steps
        self.is_hr_pass = False
        self.extra_generation_params = {}
        self.extra_network_data = None
        self.fastface_job = None
        self.cfg_scale = cfg_scale
        self.c = torch.stack([encode_text(t) for t in self.prompts])
        self.uc = None if cfg_scale == 1 else torch.stack([encode_text(t) for t in self.negative_prompts])
        self.sampler = None


# -- Forge Classic (Haoming02/sd-webui-forge-classic 1f95d717) ----------------------------------------
class ClassicCrossAttentionPatch(CrossAttentionPatch):
    """Forge Classic's own `CrossAttentionPatch` (ldm_patched era, IPAdapterPlus.py L423-630): the
    same contract, the "original" weight applied once (L622). Its sampling is Forge 2's (6-tuple
    pre-CFG functions before `calc_cond_uncond_batch`, ldm_patched/modules/samplers.py L334-360)."""


# -- reForge (Panchovix/stable-diffusion-webui-reForge main 3b56b268) ---------------------------------
class ReforgeCrossAttentionPatch(CrossAttentionPatch):
    """reForge's `CrossAttentionPatch` (extensions-builtin/sd_forge_ipadapter/lib_ipadapter/
    IPAdapterPlus.py L385-560): the same contract, but the "original" weight is applied to the face
    output twice (L497-507 and L509-519: `out_ip = out_ip * weight`, each after the same `if`)."""

    @staticmethod
    def output_weighted(out_ip, weight):
        out_ip = out_ip * weight
        out_ip = out_ip * weight
        return out_ip


def calc_cond_batch(model, conds, x_in, timestep, model_options):
    """Mirrors ldm_patched/modules/samplers.py `_calc_cond_batch` L212-355: entry i of `conds` is
    chunk label i (`cond_or_uncond` holds indices into `conds`; a None entry is evaluated as
    nothing and comes back as zeros, L221-223, L352-353); chunks with equal context shapes run in
    one call in reverse list order (L258-264); the transformer options get `cond_or_uncond`,
    `uuids` and `sigmas` (L318-320, no `cond_mark`), then `model_function_wrapper` (L327-330)."""
    outs = [torch.zeros_like(x_in) for _ in conds]
    counts = [torch.ones_like(x_in) * 1e-37 for _ in conds]
    to_run = [(entry, i) for i, entries in enumerate(conds) if entries is not None for entry in entries]
    while to_run:
        shape = to_run[0][0]["model_conds"]["c_crossattn"].shape
        fits = [i for i, item in enumerate(to_run) if item[0]["model_conds"]["c_crossattn"].shape == shape]
        fits.reverse()
        batch = [to_run[i] for i in fits]
        to_run = [item for i, item in enumerate(to_run) if i not in fits]
        labels = [label for _, label in batch]
        transformer_options = dict(model_options.get("transformer_options", {}))
        transformer_options["cond_or_uncond"] = labels[:]
        transformer_options["uuids"] = [id(entry) for entry, _ in batch]
        transformer_options["sigmas"] = timestep
        c = dict(c_crossattn=torch.cat([e["model_conds"]["c_crossattn"] for e, _ in batch]),
                 transformer_options=transformer_options)
        x = torch.cat([x_in] * len(batch))
        t = torch.cat([timestep] * len(batch))
        if "model_function_wrapper" in model_options:
            output = model_options["model_function_wrapper"](model.apply_model, {"input": x, "timestep": t, "c": c, "cond_or_uncond": labels})
        else:
            output = model.apply_model(x, t, **c)
        for (entry, label), chunk in zip(batch, output.chunk(len(batch))):
            outs[label] += chunk * entry.get("strength", 1.0)
            counts[label] += entry.get("strength", 1.0)
    return [o / n for o, n in zip(outs, counts)]


def reforge_calc_cond_uncond_batch(model, cond, uncond, x_in, timestep, model_options):
    """samplers.py L357-359: kept as a wrapper ("TODO: remove")."""
    return tuple(calc_cond_batch(model, [cond, uncond], x_in, timestep, model_options))


def reforge_sampling_function(model, x, timestep, uncond, cond, cond_scale, model_options):
    """Mirrors samplers.py `sampling_function` L413-433 and `cfg_function` L363-410: cfg-1
    optimisation → `sampler_calc_cond_batch_function(args)` *instead of* `calc_cond_batch` → each
    `sampler_pre_cfg_function(args dict)` *after* the evaluation (it returns the outputs) → the cfg
    function (its `uncond` None when the uncond prediction is None) → post-cfg functions."""
    uncond_ = None if math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization", False) else uncond
    conds = [cond, uncond_]
    if "sampler_calc_cond_batch_function" in model_options:
        out = model_options["sampler_calc_cond_batch_function"](
            {"conds": conds, "input": x, "sigma": timestep, "model": model, "model_options": model_options})
    else:
        out = calc_cond_batch(model, conds, x, timestep, model_options)
    for fn in model_options.get("sampler_pre_cfg_function", []):
        args = {"conds": conds, "conds_out": out, "cond_scale": cond_scale, "timestep": timestep,
                "input": x, "sigma": timestep, "model": model, "model_options": model_options}
        out = fn(args)
        x = args["input"]
    cond_pred, uncond_pred = out[0], out[1]
    if "sampler_cfg_function" in model_options:
        args = {"cond": x - cond_pred, "uncond": x - uncond_pred if uncond_pred is not None else None,
                "cond_scale": cond_scale, "timestep": timestep, "input": x, "sigma": timestep,
                "cond_denoised": cond_pred, "uncond_denoised": uncond_pred, "model": model, "model_options": model_options}
        result = x - model_options["sampler_cfg_function"](args)
    elif uncond_pred is None:
        result = cond_pred
    else:
        result = uncond_pred + (cond_pred - uncond_pred) * cond_scale
    for fn in model_options.get("sampler_post_cfg_function", []):
        result = fn({"denoised": result, "cond": cond, "uncond": uncond_, "cond_scale": cond_scale, "model": model,
                     "uncond_denoised": uncond_pred, "cond_denoised": cond_pred, "sigma": timestep,
                     "model_options": model_options, "input": x})
    return result, cond_pred, uncond_pred


class ReforgeUnetPatcher(UnetPatcher):
    """reForge's UnetPatcher (modules_forge/unet_patcher.py L206-212 modifiers and pre-CFG list;
    ldm_patched/modules/model_patcher.py L382-383 `set_model_sampler_calc_cond_batch_function`).
    Its CFGDenoiser runs the conditioning modifiers, then `sampling_function`
    (modules/sd_samplers_cfg_denoiser.py L238-245)."""

    def set_model_sampler_calc_cond_batch_function(self, fn):
        self.model_options["sampler_calc_cond_batch_function"] = fn

    def sample_inner(self, model, x, timestep, uncond, cond, cond_scale, model_options):
        return reforge_sampling_function(model, x, timestep, uncond, cond, cond_scale, model_options)


class ReforgeWithoutCalcSeam(ReforgeUnetPatcher):
    """A reForge-style host that offers no `sampler_calc_cond_batch_function` setter: its only
    hook is the pre-CFG list, called after the evaluation (what FastFace met before issue 14)."""

    set_model_sampler_calc_cond_batch_function = None


# -- modules/sd_samplers_timesteps.py + _impl.py (Forge 2 dfdcbab6; the same in Neo 2.26) ------------
class CFGDenoiserTimesteps(CFGDenoiser):
    """sd_samplers_timesteps.py `CFGDenoiserTimesteps(CFGDenoiser)`: the class name is what matters."""


def ddim(model, x, timesteps, extra_args=None, callback=None, disable=None, eta=0.0):
    """sd_samplers_timesteps_impl.py `ddim` L10-36: len(timesteps) − 1 model steps, a callback after
    each. The stand-in denoiser returns x₀; the update moves x to it along the step's fraction."""
    a = extra_args
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        t = torch.full((x.shape[0],), float(timesteps[index]) / 300.0)
        denoised = model(x, t, a["cond"], a["uncond"], a["cond_scale"])
        callback({"x": x, "i": i, "sigma": 0, "sigma_hat": 0, "denoised": denoised})
        x = denoised + (x - denoised) * (index - 1) / index
    return x


class TimestepSampler(Sampler):
    """sd_samplers_timesteps.py `CompVisSampler.sample` L121-146: `timesteps` from `get_timesteps`
    (L56-66: range(0, 1000, 1000 // steps) + 1), passed to `self.func` only when its signature has
    it, `callback_state` as the callback; the denoiser's `steps` is the pass's steps (L17-21)."""

    def __init__(self, p, callbacks):
        super().__init__(p, callbacks)
        self.model_wrap_cfg = CFGDenoiserTimesteps(p, callbacks)
        self.func = ddim

    def sample_timesteps(self, x, steps, cond, uncond, cond_scale):
        import inspect

        timesteps = [min(t + 1, 999) for t in range(0, 1000, 1000 // steps)]
        self.model_wrap_cfg.steps = self.model_wrap_cfg.total_steps = steps
        kwargs = {"timesteps": timesteps} if "timesteps" in inspect.signature(self.func).parameters else {}
        extra = {"cond": cond, "uncond": uncond, "cond_scale": cond_scale}
        return self.func(self.model_wrap_cfg, x, extra_args=extra, callback=self.callback_state, **kwargs)
