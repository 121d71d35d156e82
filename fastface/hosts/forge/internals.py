"""Forge's internals, found by duck typing: the samplers' batch function, the built-in IP-Adapter's
attn2 patches and its FaceID adapters. Nothing here changes anything."""
from __future__ import annotations

import copy
import importlib
from typing import Callable, Optional

FACEID_PROJECTIONS = ("ProjModelFaceIdPlus", "MLPProjModelFaceId")  # IPAdapterPlus.py L80, L101
IP_PATCH_ATTRS = ("ipadapters", "conds", "unconds", "weights", "k_key", "v_key")
CALC_MODULES = ("backend.sampling.sampling_function", "ldm_patched.modules.samplers")


def _sampler_function(name: str) -> Optional[Callable]:
    for module_name in CALC_MODULES:
        try:
            module = importlib.import_module(module_name)
        except Exception:  # ImportError, or a module that fails to import outside its WebUI
            continue
        fn = getattr(module, name, None)
        if callable(fn):
            return fn
    return None


def calc_cond_uncond_batch() -> Optional[Callable]:
    """`(model, cond, uncond, x, sigma, model_options) -> (cond x0, uncond x0)`: Forge 2's
    `backend.sampling.sampling_function.calc_cond_uncond_batch`, else Gen1 / reForge's
    `ldm_patched.modules.samplers.calc_cond_uncond_batch` (reForge keeps it as a wrapper of
    `calc_cond_batch`, samplers.py L357), else one made from `calc_cond_batch`, else None."""
    fn = _sampler_function("calc_cond_uncond_batch")
    if fn is not None:
        return fn
    batch = calc_cond_batch()
    if batch is None:
        return None

    def from_calc_cond_batch(model, cond, uncond, x, sigma, model_options):
        return tuple(batch(model, [cond, uncond], x, sigma, model_options))
    return from_calc_cond_batch


def calc_cond_batch() -> Optional[Callable]:
    """ComfyUI-style `calc_cond_batch(model, conds, x, sigma, model_options) -> [x0 per entry of
    conds]` (reForge `ldm_patched/modules/samplers.py` L206), the call a
    `sampler_calc_cond_batch_function` stands in for; None where the host has none (Forge 2)."""
    return _sampler_function("calc_cond_batch")


def is_ip_patch(value) -> bool:
    """Duck-typed `CrossAttentionPatch` (or a FastFace wrapper around one)."""
    return callable(value) and all(hasattr(value, a) for a in IP_PATCH_ATTRS)


def is_faceid_adapter(adapter) -> bool:
    """FaceID / FaceID-Plus(-v2) / Portrait: Forge builds them with a FaceID image projection."""
    flag = getattr(adapter, "is_faceid", None)
    if isinstance(flag, bool):
        return flag
    return type(getattr(adapter, "image_proj_model", None)).__name__ in FACEID_PROJECTIONS


def attn2_patches(model_options) -> dict:
    try:
        return model_options["transformer_options"]["patches_replace"]["attn2"]
    except (KeyError, TypeError):
        return {}


def copy_patch(patch):
    """A copy of a CrossAttentionPatch that shares adapters and tensors but owns its lists, so a
    later `set_new_condition` on one does not show in the other."""
    new = copy.copy(patch)
    own = getattr(new, "__dict__", None)
    if own is not None:
        for key, value in list(own.items()):
            if isinstance(value, list):
                own[key] = list(value)
    return new


def at(values, index: int, default):
    try:
        return values[index]
    except (TypeError, IndexError, KeyError):
        return default

