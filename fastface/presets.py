"""Named presets: each is a complete `FastFaceArgs` (enabled) built from the code defaults.

Numbers come from the authors' configs (`shared/docs/fastface_reference.md` §7):
`dcg_only/dcg2_style.json` → Stylistic, `fastface/am1_and_dcg.json` → Realistic,
`fastface/am2_and_dcg.json` → Realistic portrait, `am_only/*` → the two "only" presets.
Per-part scale-power s uses the code's order (down 1.55, up 1.45), not the paper's text.
"""
from __future__ import annotations

from types import MappingProxyType

from .config import FastFaceArgs, PRESET_NAMES

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
