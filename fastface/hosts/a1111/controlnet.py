"""sd-webui-controlnet, found by duck typing: its live IP-Adapter models, the `PlugableIPAdapter`
classes, and the ±1024 mark it puts on token 0 of every prompt row (cond / uncond)."""
from __future__ import annotations

import sys
from typing import Optional

from ..kinds import FACEID, PULID, AdapterKind, a1111_kind

POSITIVE_MARK_TOKEN = 1024.0  # sd-webui-controlnet scripts/hook.py
MARK_EPS = 1e-3


def ip_adapters(p) -> list:
    """sd-webui-controlnet's live IP-Adapter models for this job (duck-typed)."""
    found = []
    for script in getattr(getattr(p, "scripts", None), "alwayson_scripts", []) or []:
        network = getattr(script, "latest_network", None)
        for param in getattr(network, "control_params", None) or []:
            model = getattr(param, "control_model", None)
            if model is not None and hasattr(model, "ipadapter") and hasattr(model, "attn_eval"):
                found.append(model)
    return found


def plugable_ipadapter_classes() -> list[type]:
    seen = []
    for module in list(sys.modules.values()):
        cls = getattr(module, "PlugableIPAdapter", None)
        if isinstance(cls, type) and hasattr(cls, "attn_eval") and cls not in seen:
            seen.append(cls)
    return seen


def adapter_kind(adapter) -> Optional[AdapterKind]:
    """The identity-adapter kind of a live IP-Adapter (`hosts.kinds`), or None: left to the host."""
    return a1111_kind(adapter)


def is_faceid(adapter) -> bool:
    return adapter_kind(adapter) is FACEID


def is_pulid(adapter) -> bool:
    """A PuLID unit (ipadapter_model.py L281: "pulid" in the model's file name); see `pulid.py`."""
    return adapter_kind(adapter) is PULID


# -- rows -----------------------------------------------------------------------------------------
def crossattn(cond):
    return cond["crossattn"] if isinstance(cond, dict) else cond


def is_marked(cond) -> bool:
    """sd-webui-controlnet's `prompt_context_is_marked`: token 0 is ±1024 on every row."""
    token0 = crossattn(cond)[..., 0, :].float()
    return bool((token0.abs() - POSITIVE_MARK_TOKEN).abs().mean() < MARK_EPS)


def with_positive_mark(cond):
    """A copy of (negative) rows whose ControlNet mark says 'cond', so IP-Adapter gives them the face."""
    if isinstance(cond, dict):
        out = type(cond)({k: v.clone() for k, v in cond.items()})
        out["crossattn"][:, 0, :] = POSITIVE_MARK_TOKEN
        return out
    out = cond.clone()
    out[:, 0, :] = POSITIVE_MARK_TOKEN
    return out

