"""The one schema: every FastFace parameter, its default, range, infotext key and tooltip.

`FastFaceArgs` drives the WebUI controls (order, labels, tooltips, slider ranges), the API
(positional list or dict of named fields), the infotext (short keys) and the XYZ axes. Defaults
are the authors' code values (`ControlGenAI/FastFace`, see `shared/docs/fastface_reference.md` §7);
where the paper says otherwise the paper's value is mentioned in the tooltip.

Validation never raises: `validate_on()` (and `presets.validate()`, which starts from the
chosen preset) returns clean args plus a list of `Issue`s. Out-of-range
numbers are clamped (a non-fatal issue); values of the wrong kind are rejected (a fatal issue:
the host then turns FastFace off for that job and reports the message).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

PRESET_NAMES = (
    "Off",
    "Stylistic",
    "Realistic",
    "Realistic portrait",
    "Scale-power only",
    "Softmask only",
)
SCHEDULE_MODES = ("intermediate", "reference", "custom")
RESCALE_STEPS = ("all", "boosted")
AM_MODES = ("off", "scale-power", "softmask")
UNET_PARTS = ("down", "mid", "up")

# Lists (custom α/β schedules) are written with this separator in the UI, the API and the
# infotext: it is neither "," nor ":" nor "=", so the infotext value stays a flat key=value list.
LIST_SEPARATOR = "/"
MAX_LIST_LEN = 150


def _field(default, key: str, label: str, tip: str, *, lo=None, hi=None, step=None,
           choices: Sequence[str] | None = None, group: str = "general", advanced: bool = False,
           infotext: bool = True):
    """`infotext=False`: a view option (what is shown), not a generation parameter: it is never
    written to the infotext, never read from it, and presets do not change it."""
    meta = dict(key=key, label=label, tip=tip, lo=lo, hi=hi, step=step, choices=choices,
                group=group, advanced=advanced, infotext=infotext)
    if isinstance(default, tuple):
        return field(default_factory=lambda: default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class FastFaceArgs:
    """All FastFace settings of one generation. Immutable: make changes with `dataclasses.replace`."""

    enabled: bool = _field(False, "enabled", "FastFace", "Turn FastFace on for this generation.")
    preset: str = _field(
        "Realistic", "preset", "Preset",
        "Fills every control below. Stylistic: DCG only, for stylised prompts. Realistic: DCG + "
        "scale-power attention (the paper's main setting). Realistic portrait: DCG + scheduled "
        "softmask. Scale-power only and Softmask only: one attention transform, the WebUI's own CFG. "
        "Off: FastFace changes nothing (a baseline). Changing a control afterwards keeps the "
        "preset's name; the line under the list counts the changes.",
        choices=PRESET_NAMES)

    # --- DCG: decoupled classifier-free guidance --------------------------------------------
    dcg: bool = _field(
        True, "dcg", "Decoupled guidance (DCG)",
        "Three UNet branches per step (negative, negative+face, prompt+face) combined as "
        "u + α(id − u) + β(full − id). Replaces the WebUI's CFG while on.", group="dcg")
    alpha_peak: float = _field(
        1.5, "a", "α peak (identity)",
        "Weight of the face direction (id − uncond) on boosted steps. 1 = no boost.",
        lo=0.0, hi=10.0, step=0.05, group="dcg")
    beta_peak: float = _field(
        3.0, "b", "β peak (text)",
        "Weight of the text direction (full − id) on boosted steps. 1 = no boost.",
        lo=0.0, hi=20.0, step=0.05, group="dcg")
    schedule: str = _field(
        "intermediate", "sched", "Schedule",
        "intermediate: 1 on the first and last step, the peaks in between (any step count). "
        "reference: the authors' 4-entry lists [1, peak, peak, 1] by step index, last entry "
        "repeated (2 steps boosts the last step, as their code does). custom: your lists.",
        choices=SCHEDULE_MODES, group="dcg", advanced=True)
    alpha_custom: tuple = _field(
        (1.0, 1.5, 1.5, 1.0), "a_list", "Custom α list",
        "α per step for the custom schedule, separated by '/'; the last entry repeats.",
        lo=0.0, hi=10.0, group="dcg", advanced=True)
    beta_custom: tuple = _field(
        (1.0, 3.0, 3.0, 1.0), "b_list", "Custom β list",
        "β per step for the custom schedule, separated by '/'; the last entry repeats.",
        lo=0.0, hi=20.0, group="dcg", advanced=True)
    phi: float = _field(
        0.75, "phi", "Rescale φ",
        "After combining the branches, pull the result's contrast (standard deviation) back "
        "towards that of the prompt branch: 0 = off, 1 = fully. Stops boosted steps from "
        "over-saturating. The authors use 0.75; the paper gives no value.", lo=0.0, hi=1.0, step=0.05, group="dcg")
    rescale_steps: str = _field(
        "all", "rescale", "Rescale on",
        "all: rescale every step, as the authors' code does (not an exact no-op on unboosted "
        "steps). boosted: only on steps where α or β differ from 1.",
        choices=RESCALE_STEPS, group="dcg", advanced=True)

    # --- AM: attention manipulation in the face (IP-Adapter) cross-attention ------------------
    am_mode: str = _field(
        "scale-power", "am", "Attention transform",
        "How the face-token attention map is reshaped: scale-power min(s·Aᵖ, clamp), or the "
        "scheduled softmask (quantile mask + AdaIN). Only FaceID adapters are touched.",
        choices=AM_MODES, group="am")
    sp_s_down: float = _field(
        1.55, "s_down", "Scale s (down)",
        "Scale-power s in the down (input) blocks. Code 1.55; the paper's text says 1.45.",
        lo=0.0, hi=5.0, step=0.05, group="am")
    sp_s_mid: float = _field(
        1.0, "s_mid", "Scale s (mid)", "Scale-power s in the mid block (untouched by default).",
        lo=0.0, hi=5.0, step=0.05, group="am", advanced=True)
    sp_s_up: float = _field(
        1.45, "s_up", "Scale s (up)",
        "Scale-power s in the up (output) blocks. Code 1.45; the paper's text says 1.55.",
        lo=0.0, hi=5.0, step=0.05, group="am")
    sp_p: float = _field(
        1.3, "p", "Power p", "Scale-power exponent: above 1 the face tokens' strongest spots get relatively stronger and weak ones fade (a sharper map).",
        lo=0.1, hi=5.0, step=0.05, group="am")
    sm_quantile: float = _field(
        0.65, "q", "Softmask quantile",
        "How much of the image each face token may keep: the part of its map above this "
        "quantile is kept (0.65 keeps roughly the strongest 35%), the rest is faded out.",
        lo=0.0, hi=1.0, step=0.01, group="am")
    sm_d_first: float = _field(
        7.5, "d0", "Sharpness d (first step)", "How hard the softmask's edge is on the first step (higher = a sharper cut).",
        lo=0.0, hi=50.0, step=0.5, group="am", advanced=True)
    sm_d_later: float = _field(
        5.0, "d", "Sharpness d (later steps)", "How hard the softmask's edge is after the first step (higher = a sharper cut).",
        lo=0.0, hi=50.0, step=0.5, group="am")
    sm_s_first: float = _field(
        1.0, "s0", "Softmask scale (first step)", "Scale of the softmask on step 0.",
        lo=0.0, hi=5.0, step=0.05, group="am", advanced=True)
    sm_s_later: float = _field(
        1.55, "s", "Softmask scale (later steps)", "Scale of the softmask after step 0.",
        lo=0.0, hi=5.0, step=0.05, group="am", advanced=True)
    sm_adain: float = _field(
        0.7, "adain", "AdaIN weight w",
        "How much of the softmask's raw effect to keep. Below 1 the masked attention (and the "
        "face branch's output) is pulled back towards the original's average level and spread, "
        "so the mask moves the face attention without making it much louder or quieter. "
        "1 = no pull-back.", lo=0.0, hi=1.0, step=0.05, group="am",
        advanced=True)
    sm_invert_first: bool = _field(
        True, "inv0", "Invert first token",
        "For the softmask. FaceID-Plus-v2's first face token looks at the background, not the "
        "face. On: that token's map is flipped before the softmask and its mask flipped back "
        "after, so the token keeps its background area instead of being cut down to its few "
        "strongest spots like the face tokens. Off: it is masked like a face token. (With "
        "FaceID, Plus v1 or Portrait the first token is an ordinary face token. PuLID and InstantID "
        "have no background token: this does not apply to their units.)",
        group="am", advanced=True)
    am_down: bool = _field(True, "down", "Down blocks", "Apply the transform in the down blocks.",
                           group="am", advanced=True)
    am_mid: bool = _field(False, "mid", "Mid block",
                          "Apply the transform in the mid block (the authors exclude it).",
                          group="am", advanced=True)
    am_up: bool = _field(True, "up", "Up blocks", "Apply the transform in the up blocks.",
                         group="am", advanced=True)
    clamp_max: float = _field(
        10.0, "clamp", "Clamp maximum", "No transformed face-attention value may exceed this (keeps a boosted map from blowing up).",
        lo=1.0, hi=100.0, step=0.5, group="am", advanced=True)

    # --- host behaviour ---------------------------------------------------------------------
    hires: bool = _field(
        True, "hires", "Also in hires fix",
        "Run FastFace in the hires-fix pass too (its steps get their own schedule).",
        advanced=True)
    readout: bool = _field(
        True, "readout", "Likeness readout",
        "After each image, write how close its face is to the FaceID unit's reference face into "
        "the infotext as 'FastFace ID' (cosine similarity of insightface buffalo_l embeddings, the "
        "paper's ID metric; 'no face' when none is found). Needs a FaceID unit and the buffalo_l "
        "models the host already has; without them the infotext's 'FastFace note' says why. "
        "Never changes the image.")

    # --- view options (not generation parameters: no infotext, no preset, no XYZ axis) ----------
    show_attention: bool = _field(
        False, "show_attention", "Show face attention",
        "After the images, add one preview per image: where the face tokens look at each step, "
        "per UNet part, before and after the attention transform. Does not change the images; "
        "not saved with them.", infotext=False)

    # -- helpers --------------------------------------------------------------------------------
    def replace(self, **changes) -> "FastFaceArgs":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def validated(self) -> tuple["FastFaceArgs", list["Issue"]]:
        """These args with every value coerced and clamped into range, plus what was changed."""
        return validate_on(self, self.to_dict())


FIELDS: tuple[dataclasses.Field, ...] = dataclasses.fields(FastFaceArgs)
FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in FIELDS)
FIELDS_BY_NAME: dict[str, dataclasses.Field] = {f.name: f for f in FIELDS}
FIELDS_BY_KEY: dict[str, dataclasses.Field] = {f.metadata["key"]: f for f in FIELDS}
# View options: shown in the UI and accepted by the API, never in the infotext or a preset.
VIEW_FIELDS: tuple[str, ...] = tuple(f.name for f in FIELDS if not f.metadata["infotext"])
# Fields that a preset sets: everything that describes the method, not the toggle or the name.
# The readout only measures and the view options only show: a preset neither sets nor resets them.
NON_METHOD_FIELDS = ("enabled", "preset", "readout") + VIEW_FIELDS
METHOD_FIELDS: tuple[str, ...] = tuple(n for n in FIELD_NAMES if n not in NON_METHOD_FIELDS)


def meta(name: str) -> Mapping[str, Any]:
    return FIELDS_BY_NAME[name].metadata


def field_kind(name: str) -> str:
    """'bool', 'float', 'choice' or 'list' — how a field is shown, parsed and validated."""
    f = FIELDS_BY_NAME[name]
    if f.metadata["choices"]:
        return "choice"
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, tuple):
        return "list"
    return "float"


@dataclass(frozen=True)
class Issue:
    """A problem with one input value. `rejected` issues make the host switch FastFace off."""

    field: str
    message: str
    rejected: bool

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


# -- value coercion ----------------------------------------------------------------------------
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off", ""}


def _coerce_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"expected true/false, got {value!r}")


def _coerce_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {value!r}")
    return number


def _coerce_list(value: Any) -> tuple[float, ...]:
    if isinstance(value, str):
        parts = [p for p in value.replace(",", LIST_SEPARATOR).split(LIST_SEPARATOR) if p.strip()]
    elif isinstance(value, Iterable):
        parts = list(value)
    else:
        raise ValueError(f"expected a list of numbers, got {value!r}")
    if not parts:
        raise ValueError("expected at least one number")
    if len(parts) > MAX_LIST_LEN:
        raise ValueError(f"at most {MAX_LIST_LEN} entries, got {len(parts)}")
    return tuple(_coerce_float(p) for p in parts)


def _coerce_choice(value: Any, choices: Sequence[str]) -> str:
    if isinstance(value, str):
        text = value.strip()
        for choice in choices:  # case-insensitive, so API clients and pasted text are forgiving
            if choice.lower() == text.lower():
                return choice
    raise ValueError(f"expected one of {', '.join(choices)}; got {value!r}")


def _clamp(name: str, number: float, issues: list[Issue]) -> float:
    lo, hi = meta(name)["lo"], meta(name)["hi"]
    clamped = min(max(number, lo), hi)
    if clamped != number:
        issues.append(Issue(name, f"{number:g} is outside [{lo:g}, {hi:g}]; using {clamped:g}", False))
    return clamped


def coerce_value(name: str, value: Any, issues: list[Issue]) -> Any:
    """Turn one raw value (UI, API, infotext) into the field's type; clamps numbers into range.

    Raises ValueError for a value of the wrong kind (the caller records a rejected Issue)."""
    kind = field_kind(name)
    if kind == "bool":
        return _coerce_bool(value)
    if kind == "choice":
        return _coerce_choice(value, meta(name)["choices"])
    if kind == "list":
        numbers = _coerce_list(value)
        clamped = tuple(_clamp(name, x, issues) for x in numbers)
        return clamped
    return _clamp(name, _coerce_float(value), issues)


def validate_on(base: FastFaceArgs, values: Mapping[str, Any]) -> tuple[FastFaceArgs, list[Issue]]:
    """Build args from named raw values on top of `base`.

    Unknown names and wrong-kind values are reported as rejected issues and ignored; numbers out of
    range are clamped and reported. Never raises. (`presets.validate` picks the base from the
    values' preset.)"""
    issues: list[Issue] = []
    changes: dict[str, Any] = {}
    for name, raw in values.items():
        if name not in FIELDS_BY_NAME and name in FIELDS_BY_KEY:
            name = FIELDS_BY_KEY[name].name  # API dicts may use the short infotext keys too
        if name not in FIELDS_BY_NAME:
            issues.append(Issue(str(name), "unknown field", True))
            continue
        try:
            changes[name] = coerce_value(name, raw, issues)
        except ValueError as exc:
            issues.append(Issue(name, str(exc), True))
    return base.replace(**changes), issues
