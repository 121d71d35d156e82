"""A1111 AM: sd-webui-controlnet's `PlugableIPAdapter.attn_eval`, patched per job, recomputes the FaceID
face branch with the step's transform; forward pre-hooks on the attn2 modules say which UNet part runs."""
from __future__ import annotations

from ...method.attention import ip_attention
from ...method.blocks import unet_part
from .. import recording
from ..common import Job, PatchSet
from . import preview
from .controlnet import is_faceid, plugable_ipadapter_classes


def _patched_attn_eval(job: Job, original, transform_layers: bool):
    """`PlugableIPAdapter.attn_eval` for this job: no k/v cache; FaceID face branch transformed
    (when `transform_layers`), every other adapter and layer through the original code."""
    def attn_eval(self, hidden_states, query, cond_uncond_image_emb, attn_heads, head_dim, emb_to_k, emb_to_v):
        if isinstance(getattr(self, "cache", None), dict):
            self.cache.clear()  # k/v per call: FastFace changes the rows between steps
        st, part = job.current_pass, job.layer_part
        transform = None
        if transform_layers and job.active and st is not None and part and is_faceid(self) \
                and not getattr(self.ipadapter, "is_pulid", False):
            try:
                # rows are block-major [cond images, (id images,) uncond images]: row % images is
                # the image, so the softmask pools the branches of one image, as Forge does (an
                # int period: a reshape inside, no tensor made per call)
                images = st.images if hidden_states.shape[0] % st.images == 0 else None
                transform = job.transforms.get(part, st.step, st.total, images)
            except Exception as exc:
                job.fail("A1111 attention transform", exc)
        if transform is None:
            if job.recording is not None and is_faceid(self):   # "Show face attention" only
                preview.record_untransformed(job, self, query, cond_uncond_image_emb, attn_heads, head_dim, emb_to_k)
            return original(self, hidden_states, query, cond_uncond_image_emb, attn_heads, head_dim, emb_to_k, emb_to_v)
        try:
            batch = hidden_states.shape[0]
            ip_k, ip_v = emb_to_k(cond_uncond_image_emb), emb_to_v(cond_uncond_image_emb)
            ip_k, ip_v = (t.view(batch, -1, attn_heads, head_dim).transpose(1, 2).to(query.dtype) for t in (ip_k, ip_v))
            if job.recording is None:
                out = ip_attention(query, ip_k, ip_v, transform, kernels=job.kernels)   # (B, heads, L, d)
            else:   # "Show face attention": the same output, plus the maps
                out = recording.face_attention(query, ip_k, ip_v, transform, kernels=job.kernels,
                                             recorder=preview.recorder(job, self, batch, transform))
            job.am_calls[(st.index, st.step, job.layer_part)] += 1
            return out.transpose(1, 2).reshape(batch, -1, attn_heads * head_dim)
        except Exception as exc:
            job.fail("A1111 face attention", exc)
            return original(self, hidden_states, query, cond_uncond_image_emb, attn_heads, head_dim, emb_to_k, emb_to_v)
    return attn_eval


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

