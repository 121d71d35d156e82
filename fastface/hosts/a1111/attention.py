"""A1111 AM: sd-webui-controlnet's `PlugableIPAdapter.attn_eval`, patched per job, recomputes the face
branch of FaceID and PuLID units (`pulid.py`) with the step's transform; forward pre-hooks on the attn2
modules say which UNet part runs."""
from __future__ import annotations

from typing import Optional

from ...method.attention import ip_attention
from ...method.blocks import unet_part
from .. import recording
from ..common import IN_FACE_BRANCH, Job, PatchSet
from . import preview, pulid
from ..kinds import BY_NAME
from .controlnet import adapter_kind, plugable_ipadapter_classes


def _patched_attn_eval(job: Job, original, transform_layers: bool):
    """`PlugableIPAdapter.attn_eval` for this job: no k/v cache; the face branch of FaceID and PuLID
    units transformed (when `transform_layers`), every other adapter and layer through the original code."""
    def attn_eval(self, hidden_states, query, cond_uncond_image_emb, attn_heads, head_dim, emb_to_k, emb_to_v):
        if isinstance(getattr(self, "cache", None), dict):
            self.cache.clear()  # k/v per call: FastFace changes the rows between steps
        kind = identity_kind(self)
        st, part = job.current_pass, job.layer_part
        transform = None
        if transform_layers and kind is not None and job.active and st is not None and part:
            try:
                # rows are block-major [cond images, (id images,) uncond images]: row % images is
                # the image, so the softmask pools the branches of one image, as Forge does (an
                # int period: a reshape inside, no tensor made per call)
                images = st.images if hidden_states.shape[0] % st.images == 0 else None
                transform = job.transforms.get(part, st.step, st.total, images,
                                               background_token=BY_NAME[kind].background_token)
            except Exception as exc:
                job.fail_in_call("A1111 attention transform", exc, IN_FACE_BRANCH)
        args = (hidden_states, query, cond_uncond_image_emb, attn_heads, head_dim, emb_to_k, emb_to_v)
        if transform is None:
            if job.recording is not None and kind is not None:   # "Show face attention" only
                _record_untransformed(job, self, kind, *args)
            return original(self, *args)
        try:
            out = _transformed(job, self, kind, transform, *args)
            job.am_calls[(st.index, st.step, job.layer_part)] += 1
            job.am_adapters[kind] += 1
            return out
        except Exception as exc:
            if isinstance(getattr(self, "cache", None), dict):
                self.cache.clear()   # the host's own code must not find FastFace's k/v
            job.fail_in_call("A1111 face attention", exc, IN_FACE_BRANCH)   # out of memory: the step again
            return original(self, *args)
    return attn_eval


def identity_kind(adapter) -> Optional[str]:
    """The name of the adapter's kind (`hosts.kinds`: "faceid", "pulid" with a PuLID setting
    FastFace knows, …), or None: left to the host."""
    kind = adapter_kind(adapter)
    if kind is None or (kind.face_branch == "pulid" and pulid.setting_of(adapter) is None):
        return None
    return kind.name


def _transformed(job: Job, adapter, kind, transform, hidden_states, query, emb, heads, head_dim, emb_to_k, emb_to_v):
    batch = hidden_states.shape[0]
    recorder = None if job.recording is None else preview.recorder(job, adapter, batch, transform)
    if BY_NAME[kind].face_branch == "pulid":
        out = pulid.face_branch(pulid.setting_of(adapter), hidden_states, query, emb, heads, head_dim,
                                emb_to_k, emb_to_v, transform, sink_exact=_sink_exact(job, adapter),
                                kernels=job.kernels, recorder=recorder)
        adapter.cache.clear()   # the k/v cached here are of the unpadded tokens: not the host's
        return out
    ip_k, ip_v = emb_to_k(emb), emb_to_v(emb)
    ip_k, ip_v = (t.view(batch, -1, heads, head_dim).transpose(1, 2).to(query.dtype) for t in (ip_k, ip_v))
    if job.recording is None:
        out = ip_attention(query, ip_k, ip_v, transform, kernels=job.kernels)   # (B, heads, L, d)
    else:   # "Show face attention": the same output, plus the maps
        out = recording.face_attention(query, ip_k, ip_v, transform, kernels=job.kernels, recorder=recorder)
    return out.transpose(1, 2).reshape(batch, -1, heads * head_dim)


def _record_untransformed(job: Job, adapter, kind, hidden_states, query, emb, heads, head_dim, emb_to_k, emb_to_v):
    if BY_NAME[kind].face_branch == "sdpa":
        preview.record_untransformed(job, adapter, query, emb, heads, head_dim, emb_to_k)
        return
    try:
        recorder = preview.recorder(job, adapter, query.shape[0], None)
        pulid.record_untransformed(recorder, query, emb, heads, head_dim, emb_to_k, pulid.setting_of(adapter),
                                   _sink_exact(job, adapter))
    except Exception as exc:
        recording.give_up(job, exc)
    finally:
        adapter.cache.clear()   # the host pads its tokens: it must not find these k


def _sink_exact(job: Job, adapter) -> bool:
    """Once per adapter and job: are PuLID's zero tokens null (no K/V bias)? Noted when not."""
    key = ("pulid sink", id(adapter))
    exact = job.adapter_facts.get(key)
    if exact is None:
        exact = job.adapter_facts[key] = pulid.zero_tokens_are_null(adapter)
        if not exact:
            job.note("PuLID's K/V projections were not the bias-free ones FastFace knows: its zero tokens are "
                     "computed explicitly")
    return exact


def install_attention(job: Job, p, patches: PatchSet, transform_layers: bool) -> None:
    classes = plugable_ipadapter_classes()
    if not classes:
        job.note("sd-webui-controlnet's IP-Adapter code was not found: no attention transform")
        return
    for cls in classes:
        original = cls.__dict__.get("attn_eval", cls.attn_eval)
        patches.setattr(cls, "attn_eval", _patched_attn_eval(job, original, transform_layers))
    if not transform_layers and job.recording is None:   # the preview needs the parts too
        return
    unet = p.sd_model.model.diffusion_model
    for module_name, module in unet.named_modules():
        if module_name.endswith("attn2"):
            part = unet_part(module_name)
            handle = module.register_forward_pre_hook(lambda _m, _a, part=part: setattr(job, "layer_part", part))
            patches.on_undo(handle.remove)

