"""Small stand-ins for the parts of A1111 v1.10.1 and sd-webui-controlnet v1.1.455 that
fastface.hosts.a1111 relies on. Written from the documented contracts and checked against the
real code (read at A1111 82a973c0 and sd-webui-controlnet 56cec5b2); each class names the file and
lines it mirrors. They keep the *behaviour that matters to FastFace* (row layout, read-back of the
callback params, marker rows, k/v cache, hook order), not the models.
"""
from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import torch
import torch.nn.functional as F

POSITIVE_MARK_TOKEN, NEGATIVE_MARK_TOKEN, MARK_EPS = 1024.0, -1024.0, 1e-3  # controlnet scripts/hook.py
C, HEADS, T_FACE, T_PULID, T_INSTANTID = 8, 2, 4, 10, 16


# --- modules.script_callbacks / modules.shared ------------------------------------------------------
def install_fake_webui_modules(monkeypatch, empty_prompt):
    """`modules`, `modules.shared` (opts, sd_model) and `modules.script_callbacks` in sys.modules."""
    modules = types.ModuleType("modules")
    shared = types.ModuleType("modules.shared")
    shared.opts = SimpleNamespace(skip_early_cond=0.0, s_min_uncond_all=False, batch_cond_uncond=True)
    shared.sd_model = SimpleNamespace(cond_stage_model_empty_prompt=empty_prompt)
    callbacks = types.ModuleType("modules.script_callbacks")
    callbacks.registered = {}
    for name in ("on_cfg_denoiser", "on_infotext_pasted", "on_before_ui", "on_script_unloaded"):
        setattr(callbacks, name, lambda fn, name=name: callbacks.registered.setdefault(name, []).append(fn))
    modules.shared, modules.script_callbacks = shared, callbacks
    for name, mod in (("modules", modules), ("modules.shared", shared), ("modules.script_callbacks", callbacks)):
        monkeypatch.setitem(sys.modules, name, mod)
    return shared, callbacks


# --- sd-webui-controlnet: marks, attn hack, PlugableIPAdapter ------------------------------------------
def mark(cond: torch.Tensor, positive: bool) -> torch.Tensor:
    """hook.py mark_prompt_context L49-78: prepend a token filled with ±1024."""
    token = POSITIVE_MARK_TOKEN if positive else NEGATIVE_MARK_TOKEN
    return torch.cat([torch.zeros_like(cond[:, :1]) + token, cond], dim=1)


def unmark(context: torch.Tensor):
    """hook.py unmark_prompt_context L81-106: cond_mark 1 unless token 0 is −1024; strip token 0."""
    m = (torch.mean(torch.abs(context[:, 0, :] - NEGATIVE_MARK_TOKEN), dim=1) > MARK_EPS).float()
    return m[:, None, None, None], context[:, 1:, :]


class ControlNetState:
    """plugable_ipadapter.py's module globals `current_model` (holding cond_mark) and the hacks."""
    cond_mark = None


class FakeIPAdapterModel:
    """ipadapter_model.py IPAdapterModel: `ip_layers.to_kvs` (`To_KV`, L51-58: bias-free Linears keyed
    "{2n+1}_to_{k,v}_ip"), the kind flags (L279-281), and the unit's image embedding. PuLID (L243-269,
    image_proj_models.py L274-333): 10 id tokens; its uncond is the encoder applied to zeros, not zero.
    InstantID (L95-96, L147-158, L224-241): 16 tokens from a Resampler, uncond = Resampler(zeros), which
    is not zero; `is_plus` is set for it too ("latents" in its Resampler's state dict, L284-288)."""

    def __init__(self, is_faceid: bool, seed: int, is_pulid: bool = False, kv_bias: bool = False,
                 is_instantid: bool = False):
        g = torch.Generator().manual_seed(seed)
        self.is_faceid, self.is_pulid, self.is_instantid = is_faceid, is_pulid, is_instantid
        self.is_plus, self.is_v2 = is_instantid, False
        self.to_kvs = {}
        for number in range(3):
            for kind in ("k", "v"):
                lin = torch.nn.Linear(C, C, bias=kv_bias)
                with torch.no_grad():
                    lin.weight.copy_(torch.randn(C, C, generator=g) * 0.5)
                    if kv_bias:
                        lin.bias.copy_(torch.randn(C, generator=g) * 0.5)
                self.to_kvs[f"{number * 2 + 1}_to_{kind}_ip"] = lin
        self.ip_layers = SimpleNamespace(to_kvs=self.to_kvs)
        tokens = T_PULID if is_pulid else T_INSTANTID if is_instantid else T_FACE
        self.cond_emb = torch.randn(1, tokens, C, generator=g)
        encoded_zeros = is_pulid or is_instantid   # an encoder of zeros: not zero
        self.uncond_emb = torch.randn(1, tokens, C, generator=g) * 0.3 if encoded_zeros else torch.zeros(1, tokens, C)


class ImageEmbed:
    """ipadapter_model.py L19-40: the unit's (cond, uncond) embedding; `eval(cond_mark)` gives each row
    the cond embedding where its mark is 1, the uncond one where it is 0."""

    def __init__(self, cond_emb, uncond_emb):
        self.cond_emb, self.uncond_emb = cond_emb, uncond_emb

    def eval(self, cond_mark):
        m = cond_mark[:, :, :, 0]
        return self.cond_emb * m + self.uncond_emb * (1 - m)


class PuLIDAttnSetting:
    """pulid_attn.py L7-81 as written (the zero tokens materialised, SDPA, ortho / ortho_v2 onto x)."""

    def __init__(self, num_zero=0, ortho=False, ortho_v2=False):
        self.num_zero, self.ortho, self.ortho_v2 = num_zero, ortho, ortho_v2

    def eval(self, hidden_states, query, id_embedding, attn_heads, head_dim, id_to_k, id_to_v):
        batch_size = hidden_states.shape[0]
        if self.num_zero == 0:
            id_key, id_value = id_to_k(id_embedding).to(query.dtype), id_to_v(id_embedding).to(query.dtype)
        else:
            zero_tensor = torch.zeros((id_embedding.size(0), self.num_zero, id_embedding.size(-1)),
                                      dtype=id_embedding.dtype, device=id_embedding.device)
            id_key = id_to_k(torch.cat((id_embedding, zero_tensor), dim=1)).to(query.dtype)
            id_value = id_to_v(torch.cat((id_embedding, zero_tensor), dim=1)).to(query.dtype)
        id_key = id_key.view(batch_size, -1, attn_heads, head_dim).transpose(1, 2)
        id_value = id_value.view(batch_size, -1, attn_heads, head_dim).transpose(1, 2)
        id_hidden_states = F.scaled_dot_product_attention(query, id_key, id_value)
        id_hidden_states = id_hidden_states.transpose(1, 2).reshape(batch_size, -1, attn_heads * head_dim).to(query.dtype)
        if not self.ortho and not self.ortho_v2:
            return id_hidden_states
        orig_dtype = hidden_states.dtype
        hidden_states, id_hidden_states = hidden_states.to(torch.float32), id_hidden_states.to(torch.float32)
        projection = (torch.sum(hidden_states * id_hidden_states, dim=-2, keepdim=True)
                      / torch.sum(hidden_states * hidden_states, dim=-2, keepdim=True) * hidden_states)
        if self.ortho_v2:
            attn_map = query @ id_key.transpose(-2, -1)
            attn_mean = attn_map.softmax(dim=-1).mean(dim=1)
            attn_mean = attn_mean[:, :, :5].sum(dim=-1, keepdim=True)
            return (id_hidden_states + (attn_mean - 1) * projection).to(orig_dtype)
        return (id_hidden_states - projection).to(orig_dtype)


# pulid_attn.py L84-94; scripts/controlnet.py L1161-1166 picks one by the unit's PuLID mode
PULID_SETTING_FIDELITY = PuLIDAttnSetting(num_zero=8, ortho=False, ortho_v2=True)
PULID_SETTING_STYLE = PuLIDAttnSetting(num_zero=16, ortho=True, ortho_v2=False)
PULID_MODES = {"Fidelity": PULID_SETTING_FIDELITY, "Extremely style": PULID_SETTING_STYLE}


class PlugableIPAdapter:
    """plugable_ipadapter.py L94-308: call_ip caches k/v per key for the whole generation (L176),
    attn_eval dispatches to _attn_eval_ipadapter (L200-238, fused SDPA), patch_forward's closure
    blends cond/uncond embeddings by cond_mark (ImageEmbed.eval) and scales by weight."""

    def __init__(self, is_faceid=True, seed=0, weight=0.8, pulid_mode=None, kv_bias=False, instantid=False):
        self.ipadapter = FakeIPAdapterModel(is_faceid, seed, is_pulid=pulid_mode is not None, kv_bias=kv_bias,
                                            is_instantid=instantid)
        self.pulid_attn_setting = PULID_MODES[pulid_mode] if pulid_mode else None   # hook() L134
        self.image_emb = ImageEmbed(self.ipadapter.cond_emb, self.ipadapter.uncond_emb)   # hook() L146-148
        self.cache = {}
        self.weight = weight
        self.eval_calls = 0

    def call_ip(self, key, feat, device):
        if key in self.cache:
            return self.cache[key]
        ip = self.ipadapter.ip_layers.to_kvs[key](feat).to(device)
        self.cache[key] = ip
        return ip

    def attn_eval(self, hidden_states, query, cond_uncond_image_emb, attn_heads, head_dim, emb_to_k, emb_to_v):
        if self.ipadapter.is_pulid:   # L218-228
            assert self.pulid_attn_setting is not None
            self.eval_calls += 1
            return self.pulid_attn_setting.eval(hidden_states, query, cond_uncond_image_emb, attn_heads, head_dim,
                                                emb_to_k, emb_to_v)
        return self._attn_eval_ipadapter(hidden_states, query, cond_uncond_image_emb, attn_heads, head_dim,
                                         emb_to_k, emb_to_v)

    def _attn_eval_ipadapter(self, hidden_states, query, emb, attn_heads, head_dim, emb_to_k, emb_to_v):
        self.eval_calls += 1
        batch = hidden_states.shape[0]
        ip_k, ip_v = emb_to_k(emb), emb_to_v(emb)
        ip_k, ip_v = (t.view(batch, -1, attn_heads, head_dim).transpose(1, 2) for t in (ip_k, ip_v))
        out = F.scaled_dot_product_attention(query, ip_k, ip_v)
        return out.transpose(1, 2).reshape(batch, -1, attn_heads * head_dim)

    def patch_forward(self, number):
        def forward(attn_blk, x, q):
            emb = self.image_emb.eval(ControlNetState.cond_mark)   # L293
            k_key, v_key = f"{number * 2 + 1}_to_k_ip", f"{number * 2 + 1}_to_v_ip"
            out = self.attn_eval(x, q, emb, attn_blk.heads, x.shape[-1] // attn_blk.heads,
                                 lambda e: self.call_ip(k_key, e, q.device), lambda e: self.call_ip(v_key, e, q.device))
            return out * self.weight
        return forward


class IdentityNet(torch.nn.Module):
    """InstantID's ControlNet unit as sd-webui-controlnet runs it (scripts/hook.py L596-638): its
    cross-attention context is the IP-Adapter unit's `image_emb` evaluated with the rows' marks
    (`control_context_override.eval(cond_mark)`, L600-602; set by controlnet.py L1188-1197, the IP unit
    first), so mark-1 rows get the face tokens and mark-0 rows Resampler(0); the keypoint hint is the
    same for every row (a (1, …) tensor, broadcast). Control modes (controlnet.py L1047-1048):
    "Balanced" — neither flag; "ControlNet is more important" — `soft_injection` (the decaying
    scales, a scalar here) and `cfg_injection`, which multiplies the control by the mark (L635-638):
    mark-0 rows get none. Records per UNet call the marks, the context and the control it added."""

    MODES = ("Balanced", "ControlNet is more important")

    def __init__(self, ip_unit: "PlugableIPAdapter", mode: str = "Balanced", seed=11, weight=1.0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.context_override = ip_unit.image_emb
        self.soft_injection = self.cfg_injection = mode == "ControlNet is more important"
        self.weight = weight
        self.hint = torch.randn(1, 4, 1, 1, generator=g)             # the keypoint drawing, (1, c, h, w)
        self.to_q, self.to_k, self.to_v = (torch.nn.Linear(C, C, bias=False) for _ in range(3))
        self.hint_in = torch.nn.Linear(4, C, bias=False)
        with torch.no_grad():
            for lin in (self.to_q, self.to_k, self.to_v, self.hint_in):
                lin.weight.copy_(torch.randn(*lin.weight.shape, generator=g) * 0.5)
        self.seen = []

    def forward(self, tokens, cond_mark):
        """tokens (B, L, C) the UNet's input tokens; cond_mark (B, 1, 1, 1) → the control (B, L, C)."""
        context = self.context_override.eval(cond_mark)                         # (B, 16, C)
        hint = self.hint_in(self.hint.flatten(2).transpose(1, 2))              # (1, 1, C): every row
        q = self.to_q(tokens + hint)
        control = F.scaled_dot_product_attention(q, self.to_k(context), self.to_v(context)) * self.weight
        if self.soft_injection:
            control = control * 0.825 ** 3
        if self.cfg_injection:
            control = control * cond_mark[:, :, :, 0]
        self.seen.append(dict(marks=cond_mark.flatten().tolist(), context=context.detach().clone(),
                              control=control.detach().abs().amax(dim=(1, 2)).tolist()))
        return control


# --- the UNet ----------------------------------------------------------------------------------------
class FakeAttn2(torch.nn.Module):
    """ldm CrossAttention with ControlNet's attn_forward_hacked (plugable_ipadapter.py L19-50)."""

    def __init__(self, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.heads = HEADS
        self.to_q, self.to_k, self.to_v, self.to_out = (torch.nn.Linear(C, C, bias=False) for _ in range(4))
        with torch.no_grad():
            for lin in (self.to_q, self.to_k, self.to_v, self.to_out):
                lin.weight.copy_(torch.randn(C, C, generator=g) * 0.4)
        self.ipadapter_hacks = []

    def forward(self, x, context):
        b, _, inner = x.shape
        q, k, v = (t.view(b, -1, self.heads, inner // self.heads).transpose(1, 2)
                   for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, inner)
        for hack in self.ipadapter_hacks:
            out = out + hack(self, x, q)
        return self.to_out(out)


class Block(torch.nn.Module):
    def __init__(self, seed):
        super().__init__()
        self.attn2 = FakeAttn2(seed)


class FakeUNet(torch.nn.Module):
    """A UNet-shaped toy: attn2 layers named like ldm's (input_blocks / middle_block /
    output_blocks), ControlNet's unmarking at the top (hook.py forward L472-485)."""

    def __init__(self):
        super().__init__()
        self.input_blocks = torch.nn.ModuleList([Block(1)])
        self.middle_block = Block(2)
        self.output_blocks = torch.nn.ModuleList([Block(3)])
        self.proj_in = torch.nn.Linear(4, C, bias=False)
        self.proj_out = torch.nn.Linear(C, 4, bias=False)
        g = torch.Generator().manual_seed(4)
        with torch.no_grad():
            for lin in (self.proj_in, self.proj_out):
                lin.weight.copy_(torch.randn(*lin.weight.shape, generator=g) * 0.5)
        self.rows_seen = []
        self.controls = []   # ControlNet units (`IdentityNet`), applied to every row as hook.py does

    def attn_layers(self):
        return [self.input_blocks[0].attn2, self.middle_block.attn2, self.output_blocks[0].attn2]

    def forward(self, x, sigma, context):
        self.rows_seen.append(x.shape[0])
        ControlNetState.cond_mark, context = unmark(context)
        h = self.proj_in(x.flatten(2).transpose(1, 2))
        for control in self.controls:
            h = h + control(h, ControlNetState.cond_mark)
        for attn in self.attn_layers():
            h = h + attn(h, context)
        return self.proj_out(h).transpose(1, 2).reshape(x.shape) * 0.1 + x * 0.5 / (1 + sigma.view(-1, 1, 1, 1))


def hook_ip_adapter(unet: FakeUNet, adapter: PlugableIPAdapter):
    """PlugableIPAdapter.hook L113-170: one closure per attn2, numbered input, output, middle."""
    adapter.cache = {}
    for number, layer in enumerate([unet.input_blocks[0].attn2, unet.output_blocks[0].attn2, unet.middle_block.attn2]):
        layer.ipadapter_hacks.append(adapter.patch_forward(number))


# --- the CFG denoiser and samplers -------------------------------------------------------------------
def catenate_conds(conds):  # sd_samplers_cfg_denoiser.py L11-15
    if not isinstance(conds[0], dict):
        return torch.cat(conds)
    return {key: torch.cat([x[key] for x in conds]) for key in conds[0].keys()}


class CFGDenoiserParams:  # script_callbacks.py L45
    def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser):
        self.x, self.image_cond, self.sigma = x, image_cond, sigma
        self.sampling_step, self.total_sampling_steps = sampling_step, total_sampling_steps
        self.text_cond, self.text_uncond, self.denoiser = text_cond, text_uncond, denoiser


class CFGDenoiser(torch.nn.Module):
    """sd_samplers_cfg_denoiser.py CFGDenoiser.forward L156-311, without masks, edit models,
    refiner and previews: [cond rows..., uncond rows] → on_cfg_denoiser (read back x,
    image_cond, sigma, text_cond, text_uncond) → skip tests → one call (or chunked call when the
    token lengths differ) → combine_denoised. k-diffusion: the model returns x₀."""

    def __init__(self, unet, callbacks, shared, sampler):
        super().__init__()
        self.unet, self.callbacks, self.shared, self.sampler = unet, callbacks, shared, sampler
        self.step, self.steps, self.total_steps, self.p = 0, None, None, None
        self.need_last_noise_uncond, self.last_noise_uncond = False, None   # L63-64 (DDIM CFG++)

    def inner_model(self, x, sigma, cond):
        return self.unet(x, sigma, cond["c_crossattn"][0])

    def combine_denoised(self, x_out, conds_list, uncond, cond_scale):  # L74-82
        denoised_uncond = x_out[-uncond.shape[0]:]
        denoised = torch.clone(denoised_uncond)
        for i, conds in enumerate(conds_list):
            for cond_index, weight in conds:
                denoised[i] += (x_out[cond_index] - denoised_uncond[i]) * (weight * cond_scale)
        return denoised

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond, conds_list):
        batch_size = len(conds_list)
        repeats = [len(c) for c in conds_list]
        x_in = torch.cat([torch.stack([x[i] for _ in range(n)]) for i, n in enumerate(repeats)] + [x])
        sigma_in = torch.cat([torch.stack([sigma[i] for _ in range(n)]) for i, n in enumerate(repeats)] + [sigma])
        image_cond_in = torch.cat([torch.stack([image_cond[i] for _ in range(n)]) for i, n in enumerate(repeats)] + [image_cond])
        params = CFGDenoiserParams(x_in, image_cond_in, sigma_in, 0, 0, cond, uncond, self)
        for fn in self.callbacks.registered.get("on_cfg_denoiser", []):
            fn(params)
        x_in, image_cond_in, sigma_in = params.x, params.image_cond, params.sigma
        tensor, uncond = params.text_cond, params.text_uncond
        opts = self.shared.opts
        skip_uncond = False
        if opts.skip_early_cond != 0. and self.step / self.total_steps <= opts.skip_early_cond:
            skip_uncond = True
        elif (self.step % 2 or opts.s_min_uncond_all) and s_min_uncond > 0 and sigma[0] < s_min_uncond:
            skip_uncond = True
        if skip_uncond:
            x_in, sigma_in = x_in[:-batch_size], sigma_in[:-batch_size]
        make = lambda c: {"c_crossattn": [c]}  # noqa: E731
        if tensor.shape[1] == uncond.shape[1] or skip_uncond:
            cond_in = tensor if skip_uncond else catenate_conds([tensor, uncond])
            x_out = self.inner_model(x_in, sigma_in, cond=make(cond_in))
        else:
            x_out = torch.zeros_like(x_in)
            for a in range(0, tensor.shape[0], batch_size * 2):
                b = min(a + batch_size * 2, tensor.shape[0])
                x_out[a:b] = self.inner_model(x_in[a:b], sigma_in[a:b], cond=make(tensor[a:b]))
            x_out[-uncond.shape[0]:] = self.inner_model(x_in[-uncond.shape[0]:], sigma_in[-uncond.shape[0]:], cond=make(uncond))
        if skip_uncond:
            x_out = torch.cat([x_out, torch.cat([x_out[c[0][0]:c[0][0] + 1] for c in conds_list])])
        if self.need_last_noise_uncond:   # L281-282: what DDIM CFG++ renoises with
            self.last_noise_uncond = torch.clone(x_out[-uncond.shape[0]:])
        denoised = self.combine_denoised(x_out, conds_list, uncond, 1.0 if skip_uncond else cond_scale)
        self.step += 1
        return denoised


class Sampler:
    """sd_samplers_common.Sampler + a k-diffusion loop: `launch_sampling` sets steps/total_steps
    (L265-268), the loop calls the model then `callback_state({'i': i})` (k_diffusion sampling.py
    sample_euler / sample_heun: the callback comes right after the first model call of a step)."""

    def __init__(self, unet, callbacks, shared, second_order=False):
        self.model_wrap_cfg = CFGDenoiser(unet, callbacks, shared, self)
        self.second_order = second_order
        self.s_min_uncond = 0.0
        self.callback_steps = []

    def callback_state(self, d):
        self.callback_steps.append(d["i"])

    def sample(self, x, sigmas, cond, uncond, conds_list, cond_scale=1.0):
        den = self.model_wrap_cfg
        den.steps = len(sigmas) - 1
        den.total_steps = den.steps * (2 if self.second_order else 1)
        den.step = 0
        image_cond = torch.zeros(x.shape[0], 1, 1, 1)
        callback = self.callback_state  # looked up when sampling starts, like A1111's lambda

        def model(x, sigma):
            s = torch.full((x.shape[0],), float(sigma))
            return den(x, s, uncond, cond, cond_scale, self.s_min_uncond, image_cond, conds_list)

        outputs = []
        for i in range(len(sigmas) - 1):
            denoised = model(x, sigmas[i])
            outputs.append(denoised)
            callback({"i": i})
            d = (x - denoised) / sigmas[i]
            dt = sigmas[i + 1] - sigmas[i]
            if not self.second_order or sigmas[i + 1] == 0:
                x = x + d * dt
            else:  # Heun
                x2 = x + d * dt
                denoised2 = model(x2, sigmas[i + 1])
                d2 = (x2 - denoised2) / sigmas[i + 1]
                x = x + (d + d2) / 2 * dt
        return x, outputs


class CFGDenoiserTimesteps(CFGDenoiser):
    """sd_samplers_timesteps.py L47-72: the same forward, but the model returns ε and the
    "sigma" argument is the integer timestep."""

    alphas = torch.linspace(0.999, 0.01, 1000)

    def inner_model(self, x, t, cond):
        return self.unet(x, t / 1000.0, cond["c_crossattn"][0])  # read as ε


def ddim_like(model, x, timesteps, extra_args=None, callback=None, disable=None):
    """sd_samplers_timesteps_impl.py ddim L12-41: len(timesteps) − 1 model steps, callback each."""
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index])
        x = x - 0.1 * e_t
        callback({"i": i})
    return x


def ddim_cfgpp_like(model, x, timesteps, extra_args=None, callback=None, disable=None):
    """sd_samplers_timesteps_impl.py ddim_cfgpp L44-77: sets `need_last_noise_uncond` on the
    denoiser, then every step reads `last_noise_uncond` (the uncond rows' output) to renoise with."""
    model.denoiser.need_last_noise_uncond = True
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index])
        x = x - 0.1 * e_t + 0.05 * model.denoiser.last_noise_uncond
        callback({"i": i})
    return x


class TimestepSampler(Sampler):
    """sd_samplers_timesteps.py CompVisSampler.sample L141-163: passes `timesteps` only if the
    sampler function's signature has it (inspect.signature), then launch_sampling(steps)."""

    def __init__(self, unet, callbacks, shared):
        super().__init__(unet, callbacks, shared)
        self.model_wrap_cfg = CFGDenoiserTimesteps(unet, callbacks, shared, self)
        self.func = ddim_like

    def sample_timesteps(self, x, steps, cond, uncond, conds_list, cond_scale=1.0):
        import inspect

        den = self.model_wrap_cfg
        timesteps = list(range(1, 1000, 1000 // steps))
        kwargs = {"timesteps": timesteps} if "timesteps" in inspect.signature(self.func).parameters else {}
        den.steps, den.total_steps, den.step = steps, steps, 0
        image_cond = torch.zeros(x.shape[0], 1, 1, 1)
        outputs = []

        def model(x, t):
            out = den(x, torch.full((x.shape[0],), float(t)), uncond, cond, cond_scale, 0.0, image_cond, conds_list)
            outputs.append(out)
            return out

        model.denoiser = den   # ddim_cfgpp sets and reads attributes of the denoiser it is given

        return self.func(model, x, callback=self.callback_state, **kwargs), outputs
