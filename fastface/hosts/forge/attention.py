"""Forge AM: `FaceAttn2Patch` stands in for each built-in IP-Adapter attn2 patch, and `clone_unet`
puts the wrappers into the pass's UNet clone without deep-copying the adapters."""
from __future__ import annotations

import math
from typing import Optional

import torch

from ...method.attention import ip_attention
from ...method.blocks import unet_part
from .. import recording
from ..common import IN_FACE_BRANCH, Job
from . import preview
from .internals import adapter_kind, at, attn2_patches, copy_patch, is_ip_patch, weight_power
from .state import ForgePass

FULL_SIGMA_START = 999999999.0   # percent_to_sigma(0.0) = 999999999.9: no upper bound (backend/modules/k_prediction.py L161-165)
NO_SIGMA = 999999999.9           # the σ IPAdapterPlus.py L402 assumes when the call carries none


# -- AM: the attn2 wrapper --------------------------------------------------------------------------
class FaceAttn2Patch:
    """Stands in for one IP-Adapter attn2 patch. Identity adapters (the kinds of `hosts.kinds`:
    FaceID, …) get the explicit face attention with FastFace's transform on targeted parts and
    steps; anything else is the original call.

    Per layer nothing is synchronised with the device and little is rebuilt: the transform comes
    from the job's cache (an int period as the softmask's groups), the face K/V projections are
    made once per pass, and the unit's start/end window is a host decision when it is the full
    range (Forge's default) or a 0/1 factor computed on the device once per UNet call."""

    _fastface_wrapper = True

    def __init__(self, inner, job: Job):
        self.inner = inner
        self.job = job
        self._split = None      # (adapter count, {identity index: kind}, patch without them)
        self._kv = {}           # identity index -> (k_cond, k_uncond, v_cond, v_uncond), (1, T, C) each

    # Forge deep-copies model_options on every clone: share the adapter, own the lists.
    def __deepcopy__(self, memo):
        new = FaceAttn2Patch(copy_patch(self.inner), self.job)
        memo[id(self)] = new
        return new

    def set_new_condition(self, *args, **kwargs):
        self._split, self._kv = None, {}
        return self.inner.set_new_condition(*args, **kwargs)

    def __getattr__(self, attr):
        if attr in ("inner", "job", "_split", "_kv") or attr.startswith("__"):
            raise AttributeError(attr)
        if attr == "to":  # ModelPatcher.model_patches_to replaces patches by patch.to(device)
            inner_to = getattr(self.inner, "to")  # AttributeError when the inner patch has none
            return lambda *a, **k: FaceAttn2Patch(inner_to(*a, **k), self.job)
        return getattr(self.inner, attr)

    def _identity_split(self):
        """({identity adapter index: its kind}, the patch without them), rebuilt only when the
        adapter list changes. With no other adapter left that patch has empty lists: Forge's text
        attention."""
        adapters = list(getattr(self.inner, "ipadapters", ()))
        if self._split is None or self._split[0] != len(adapters):
            face = {i: kind for i, kind in ((i, adapter_kind(a)) for i, a in enumerate(adapters)) if kind is not None}
            others = copy_patch(self.inner)
            keep = [i for i in range(len(adapters)) if i not in face]
            for attr, value in list(vars(others).items()):
                if isinstance(value, list) and len(value) == len(adapters):
                    setattr(others, attr, [value[i] for i in keep])
            self._split = (len(adapters), face, others)
        return self._split[1], self._split[2]

    def has_face(self) -> bool:
        return bool(self._identity_split()[0])

    def kinds(self) -> list:
        """The kinds (`hosts.kinds`) of this patch's identity adapters."""
        return list(self._identity_split()[0].values())

    def weight_power(self) -> Optional[int]:
        """How the host's patch applies an "original" unit weight (w or w², `internals.weight_power`):
        FastFace's layer applies it the same way, so an identity transform gives the host's output."""
        return weight_power(self.inner)

    def __call__(self, n, context_attn2, value_attn2, extra_options):
        job = self.job
        st = job.current_pass
        transform = part = period = None
        if job.active and isinstance(st, ForgePass) and self.has_face():
            try:
                part = unet_part(extra_options.get("block"))
                if part is not None:   # whether AM acts here (each adapter's own transform: _transformed)
                    period = self._groups(n.shape[0], extra_options)
                    transform = job.transforms.get(part, st.step, st.total, period)
            except Exception as exc:
                job.fail_in_call("Forge attention transform", exc, IN_FACE_BRANCH)
                transform = None
        if transform is None:
            if job.recording is not None and isinstance(st, ForgePass):   # "Show face attention" only
                preview.record_untransformed(self, n, extra_options)
            return self.inner(n, context_attn2, value_attn2, extra_options)
        try:
            out = self._transformed(n, context_attn2, value_attn2, extra_options, part, period)
        except Exception as exc:
            job.fail_in_call("Forge face attention", exc, IN_FACE_BRANCH)   # out of memory: the step again
            return self.inner(n, context_attn2, value_attn2, extra_options)
        if out is None:  # a case FastFace leaves to Forge (noted once)
            return self.inner(n, context_attn2, value_attn2, extra_options)
        return out

    @staticmethod
    def _groups(rows: int, extra_options) -> Optional[int]:
        """The softmask's pooling period: rows are chunk-major [chunk 0 images, chunk 1 …], so
        row r pools with the rows r' ≡ r (mod rows per chunk), the branches of one image (closest
        to the authors' code). An int: no tensor is made per call."""
        chunks = max(len(extra_options.get("cond_or_uncond") or [0]), 1)
        return rows // chunks if rows % chunks == 0 else None

    def _supported(self, index: int, extra_options) -> Optional[str]:
        inner = self.inner
        weight_type = str(at(getattr(inner, "weight_type", None), index, "original"))
        if not (weight_type.startswith("original") or weight_type.startswith("linear")):
            return f"IP-Adapter weight type {weight_type!r}"
        if weight_type.startswith("original") and self.weight_power() is None:
            return "an IP-Adapter whose unit weight FastFace could not measure"
        if at(getattr(inner, "masks", None), index, None) is not None:
            return "an attention mask on the identity unit"
        if at(getattr(inner, "unfold_batch", None), index, False):
            return "unfold batch on the identity unit"
        if extra_options.get("ad_params") is not None:
            return "AnimateDiff context windows"
        return None

    def _face_kv(self, index: int, labels, per_chunk: int, heads: int, dtype):
        """K/V of the face tokens per row, chunk by chunk the cond or the uncond embedding (as the
        IP-Adapter picks them, IPAdapterPlus.py L449-464), shaped (rows, heads, T, d). The
        projections are made once per pass; per call one cat each."""
        inner = self.inner
        if index not in self._kv:
            adapter = inner.ipadapters[index]
            to_k = adapter.ip_layers.to_kvs[inner.k_key]
            to_v = adapter.ip_layers.to_kvs[inner.v_key]
            cond, uncond = inner.conds[index], inner.unconds[index]
            self._kv[index] = (to_k(cond), to_k(uncond), to_v(cond), to_v(uncond))
        k_cond, k_uncond, v_cond, v_uncond = self._kv[index]
        ks = (k_cond.repeat(per_chunk, 1, 1), k_uncond.repeat(per_chunk, 1, 1))
        vs = (v_cond.repeat(per_chunk, 1, 1), v_uncond.repeat(per_chunk, 1, 1))
        ip_k = torch.cat([ks[c] for c in labels], dim=0)
        ip_v = torch.cat([vs[c] for c in labels], dim=0)
        rows = ip_k.shape[0]
        split = lambda t: t.to(dtype).view(rows, -1, heads, t.shape[-1] // heads).transpose(1, 2)  # noqa: E731
        return split(ip_k), split(ip_v)

    def _window(self, index: int, extra_options, st: "ForgePass"):
        """The unit's start/end window (IPAdapterPlus.py L401-418 skips the adapter when
        σ > sigma_start or σ < sigma_end): None = every σ is inside (Forge's default 0–100 %,
        decided on the host); else a (1,) 0/1 factor for this call's σ, made on the device once
        per UNet call and window (Forge itself reads σ with `.item()` in every layer)."""
        inner = self.inner
        start = float(at(getattr(inner, "sigma_start", None), index, math.inf))   # Python numbers
        end = float(at(getattr(inner, "sigma_end", None), index, -math.inf))
        if start >= FULL_SIGMA_START and end <= 0.0:
            return None
        sigmas = extra_options.get("sigmas")
        if sigmas is None:
            return 1.0 if end <= NO_SIGMA <= start else 0.0
        if st.window_sigmas is not sigmas:
            st.window_sigmas, st.windows = sigmas, {}
        key = (start, end)
        if key not in st.windows:
            s = sigmas[:1]
            st.windows[key] = ((s <= start) & (s >= end)).to(torch.float32)
        return st.windows[key]

    def _transformed(self, q, k, v, extra_options, part: str, period: Optional[int]):
        inner, job, st = self.inner, self.job, self.job.current_pass
        face, others = self._identity_split()
        for i in face:
            reason = self._supported(i, extra_options)
            if reason is not None:
                job.note(f"attention transform skipped: {reason} is not supported on Forge")
                return None
        # Text branch and the other adapters through Forge's own code: the patch without its
        # identity adapters; with none left, Forge's attention alone (called without σ, which the
        # patch would read with `.item()` only to gate adapters it no longer has).
        if len(face) < self._split[0]:
            out = others(q, k, v, extra_options)
        else:
            out = others(q, k, v, {key: val for key, val in extra_options.items() if key != "sigmas"})

        heads = extra_options["n_heads"]          # Python ints, not tensors
        labels = extra_options["cond_or_uncond"]
        rows, tokens, width = q.shape
        per_chunk = rows // len(labels)
        qh = q.view(rows, tokens, heads, width // heads).transpose(1, 2)
        counted = False
        for i, kind in face.items():
            window = self._window(i, extra_options, st)
            if isinstance(window, float) and window == 0.0:
                continue
            # per kind: *Invert first token* applies only where token 0 may be a background token
            transform = job.transforms.get(part, st.step, st.total, period, background_token=kind.background_token)
            weight = float(at(inner.weights, i, 1.0))     # a Python number (the unit's weight)
            linear = str(at(getattr(inner, "weight_type", None), i, "original")).startswith("linear")
            kh, vh = self._face_kv(i, labels, per_chunk, heads, q.dtype)
            if linear:
                kh, vh = kh * weight, vh * weight
            if job.recording is None:
                face_out = ip_attention(qh, kh, vh, transform, kernels=job.kernels)
            else:   # "Show face attention": the same output, plus the maps
                face_out = recording.face_attention(qh, kh, vh, transform, kernels=job.kernels, recorder=preview.recorder(
                    job, inner.ipadapters[i], rows, extra_options, transform))
            face_out = face_out.transpose(1, 2).reshape(rows, tokens, width)
            if not linear:   # the host's own weighting: w (Forge 2, Forge Classic) or w² (reForge)
                face_out = face_out * weight ** self.weight_power()
            if isinstance(window, torch.Tensor):
                face_out = face_out * window.to(face_out.dtype)
            else:
                counted = True            # the trace counts layers known on the host to be inside
                job.am_adapters[kind.name] += 1
            out = out + face_out.to(out.dtype)
        if counted:
            job.layer_part = part
            job.am_calls[(st.index, st.step, part)] += 1
        return out.to(q.dtype)


def _wrap(value, job: Job):
    """The value FastFace puts in its clone's attn2 dict (re-wrapping its own older wrappers)."""
    if getattr(value, "_fastface_wrapper", False):
        return FaceAttn2Patch(value.inner, job)
    if is_ip_patch(value):
        return FaceAttn2Patch(value, job)
    return value


def clone_unet(source, job: Job):
    """`source.clone()` with every IP-Adapter attn2 patch wrapped, without deep-copying adapters.

    `clone()` deep-copies `model_options`; a bare CrossAttentionPatch would take its adapter
    along. So the clone is made from a *new* model-options tree whose attn2 entries are already
    wrappers (cheap `__deepcopy__`); the source's own dicts are never modified, and its
    `model_options` attribute is put back before this returns."""
    options = source.model_options
    attn2 = attn2_patches(options)
    wrapped = {key: _wrap(value, job) for key, value in attn2.items()}
    if all(wrapped[key] is attn2[key] for key in attn2):
        return source.clone()
    light = dict(options)
    transformer_options = dict(options["transformer_options"])
    patches_replace = dict(transformer_options["patches_replace"])
    patches_replace["attn2"] = wrapped
    transformer_options["patches_replace"] = patches_replace
    light["transformer_options"] = transformer_options
    source.model_options = light
    try:
        return source.clone()
    finally:
        source.model_options = options

