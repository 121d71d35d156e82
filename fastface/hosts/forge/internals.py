"""Forge's internals, found by duck typing: the samplers' batch function, the built-in IP-Adapter's
attn2 patches, its identity adapters (their kinds: `hosts.kinds`) and how its patch applies a
unit's weight. Nothing here changes anything."""
from __future__ import annotations

import copy
import importlib
import math
from typing import Callable, Optional

import torch

from ..kinds import FACEID, AdapterKind, forge_kind

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


def adapter_kind(adapter) -> Optional[AdapterKind]:
    """The identity-adapter kind of one of a patch's adapters (`hosts.kinds`), or None: Forge's own."""
    return forge_kind(adapter)


def is_faceid_adapter(adapter) -> bool:
    """FaceID / FaceID-Plus(-v2) / Portrait: Forge builds them with a FaceID image projection."""
    return adapter_kind(adapter) is FACEID


def is_identity_adapter(adapter) -> bool:
    """An adapter of a kind FastFace knows (`hosts.kinds`): its face branch is FastFace's."""
    return adapter_kind(adapter) is not None


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


_WEIGHT_POWERS: dict = {}   # a patch class -> its weight power (or None)


def weight_power(patch) -> Optional[int]:
    """The power of an "original" unit weight w in what the IP-Adapter patch adds to the text
    attention: 1 (w·face, Forge 2 IPAdapterPlus.py L479), 2 (w²·face: reForge 3b56b268 multiplies
    twice, L507 and L519), None when the patch cannot be measured or does something else.

    Measured, not assumed: the patch is called once per class (per process, at set-up) on a copy
    that holds only its first adapter, at w = 1 and w = 2, with a zero text value so that the
    output is the weighted face attention alone; the ratio of the two is 2 ** power."""
    kind = type(patch)
    if kind not in _WEIGHT_POWERS:
        try:
            _WEIGHT_POWERS[kind] = _measured_power(patch)
        except Exception:   # a patch that needs more than this call gives it: unknown
            _WEIGHT_POWERS[kind] = None
    return _WEIGHT_POWERS[kind]


def _one_adapter_copy(patch, weight: float):
    probe = copy_patch(patch)
    count = len(getattr(patch, "ipadapters", ()))
    for attr, value in list(vars(probe).items()):
        if isinstance(value, list) and len(value) == count:
            setattr(probe, attr, value[:1])
    overrides = {"weights": [weight], "weight_type": ["original"], "masks": [None], "sigma_start": [math.inf],
                 "sigma_end": [-math.inf], "unfold_batch": [False]}
    for attr, value in overrides.items():
        if hasattr(probe, attr):
            setattr(probe, attr, value)
    probe.unconds = list(probe.conds)
    return probe


def _measured_power(patch) -> Optional[int]:
    adapter = patch.ipadapters[0]
    to_k = adapter.ip_layers.to_kvs[patch.k_key]
    width = int(to_k.weight.shape[0])
    device, dtype = to_k.weight.device, to_k.weight.dtype
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, width, generator=g, dtype=torch.float32).to(device, dtype)
    zero = torch.zeros(1, 1, width, device=device, dtype=dtype)   # text value 0: its attention adds 0
    options = {"cond_or_uncond": [0], "n_heads": 1, "original_shape": [1, 1, 1, 1], "transformer_index": 0}
    with torch.no_grad():
        one, two = (_one_adapter_copy(patch, w)(q, zero, zero, dict(options)).float() for w in (1.0, 2.0))
    base = float(one.abs().sum())
    if not (base > 0.0 and math.isfinite(base)):
        return None
    power = math.log2(float(two.abs().sum()) / base)
    nearest = round(power)
    return nearest if nearest in (1, 2) and abs(power - nearest) < 0.02 else None
