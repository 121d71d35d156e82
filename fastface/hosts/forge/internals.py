"""Forge's internals, found by duck typing: the samplers' batch function, the built-in IP-Adapter's
attn2 patches and its FaceID adapters. Nothing here changes anything."""
from __future__ import annotations

import copy
import importlib
from typing import Callable, Optional

FACEID_PROJECTIONS = ("ProjModelFaceIdPlus", "MLPProjModelFaceId")  # IPAdapterPlus.py L80, L101
IP_PATCH_ATTRS = ("ipadapters", "conds", "unconds", "weights", "k_key", "v_key")
CALC_MODULES = ("backend.sampling.sampling_function", "ldm_patched.modules.samplers")


def calc_cond_uncond_batch() -> Optional[Callable]:
    """Forge 2's `backend.sampling.sampling_function.calc_cond_uncond_batch`, else Gen1 / reForge's
    `ldm_patched.modules.samplers.calc_cond_uncond_batch`, else None."""
    for module_name in CALC_MODULES:
        try:
            module = importlib.import_module(module_name)
        except Exception:  # ImportError, or a module that fails to import outside its WebUI
            continue
        fn = getattr(module, "calc_cond_uncond_batch", None)
        if callable(fn):
            return fn
    return None


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

