"""Named presets, each a complete `FastFaceArgs` (enabled) built from the code defaults, and the
reading of raw values (UI, API, infotext) on top of the preset they name.

Numbers come from the authors' configs (`shared/docs/fastface_reference.md` §7):
`dcg_only/dcg2_style.json` → Stylistic, `fastface/am1_and_dcg.json` → Realistic,
`fastface/am2_and_dcg.json` → Realistic portrait, `am_only/*` → the two "only" presets.
Per-part scale-power s uses the code's order (down 1.55, up 1.45), not the paper's text.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping, Sequence

from .config import FIELD_NAMES, PRESET_NAMES, FastFaceArgs, Issue, coerce_value, validate_on

_BASE = FastFaceArgs(enabled=True)

PRESETS = MappingProxyType({
    "Off": _BASE.replace(preset="Off", dcg=False, am_mode="off"),
    "Stylistic": _BASE.replace(preset="Stylistic", dcg=True, am_mode="off"),
    "Realistic": _BASE.replace(preset="Realistic", dcg=True, am_mode="scale-power"),
    "Realistic portrait": _BASE.replace(preset="Realistic portrait", dcg=True, am_mode="softmask"),
    "Scale-power only": _BASE.replace(preset="Scale-power only", dcg=False, am_mode="scale-power"),
    "Softmask only": _BASE.replace(preset="Softmask only", dcg=False, am_mode="softmask"),
})
assert tuple(PRESETS) == PRESET_NAMES


def apply_preset(args: FastFaceArgs, name: str) -> FastFaceArgs:
    """`args` with every method field taken from preset `name`; the toggle and the view options
    (the likeness readout, show_attention) are kept."""
    return PRESETS[name].replace(enabled=args.enabled, readout=args.readout, show_attention=args.show_attention)


def validate(values: Mapping[str, Any], base: FastFaceArgs | None = None) -> tuple[FastFaceArgs, list[Issue]]:
    """Build args from named raw values on top of `base` (default: the chosen preset's values).

    Unknown names and wrong-kind values are reported as rejected issues and ignored; numbers out of
    range are clamped and reported. Never raises."""
    issues: list[Issue] = []
    values = dict(values)
    if base is None:
        preset_name = values.get("preset", FastFaceArgs.preset)
        try:
            preset_name = coerce_value("preset", preset_name, issues)
        except ValueError as exc:
            issues.append(Issue("preset", str(exc), True))
            values.pop("preset")
            preset_name = FastFaceArgs.preset
        base = PRESETS[preset_name].replace(enabled=FastFaceArgs.enabled)
    args, more = validate_on(base, values)
    return args, issues + more


def from_script_args(script_args: Sequence[Any]) -> tuple[FastFaceArgs, list[Issue]]:
    """The host script's argument tuple → args.

    Accepts what A1111/Forge hand an AlwaysOn script: the UI's positional values in field order
    (possibly shorter, from older API clients), or a dict of named fields first (API)."""
    script_args = list(script_args)
    # A dict (API) or args object (Python callers) comes first; A1111's API fills the rest of the
    # script's slots with the UI defaults, which are then ignored.
    if script_args and isinstance(script_args[0], FastFaceArgs):
        return script_args[0].validated()
    if script_args and isinstance(script_args[0], Mapping):
        return validate(script_args[0])
    if len(script_args) > len(FIELD_NAMES):
        extra = len(script_args) - len(FIELD_NAMES)
        script_args = script_args[: len(FIELD_NAMES)]
        issue = [Issue("args", f"{extra} extra positional value(s) ignored", False)]
    else:
        issue = []
    args, issues = validate(dict(zip(FIELD_NAMES, script_args)))
    return args, issue + issues
