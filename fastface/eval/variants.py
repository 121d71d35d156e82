"""What is compared: variants of FastFace's settings. A variant is a preset name (`"Realistic"`), a
preset plus overrides (`{preset = "Realistic", alpha_peak = 2.0, name = "strong"}`), or one point
of a sweep (`[sweep] preset = "Realistic", alpha_peak = [1.0, 1.5, 2.0], beta_peak = [2, 3]`
expands to the grid of the listed values of numeric fields).

Every variant is validated by the one schema the UI, the API and the infotext use
(`fastface.presets.validate`): an unknown field, a value of the wrong kind or out of range stops
the run before anything is generated, with one line naming the field and the variant. Each
variant carries its `setting`, the infotext value the server writes into its images
(`preset=Realistic, a=2.0`), which pastes back into the WebUI; its `label` (rows, file names,
tables) is the preset's name for a bare preset (as before variants existed), the `name` given,
or else the setting itself.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from ..config import FIELD_NAMES, PRESET_NAMES, field_kind
from ..infotext import to_infotext
from ..presets import validate

BASELINE = "Off"
NOT_SETTINGS = ("enabled", "readout", "show_attention")   # per run, not what a variant compares
SWEEP_BASE = "Realistic"
MAX_GRID = 10_000   # variants a sweep may expand to (far more than a run could generate)


@dataclass(frozen=True)
class Variant:
    label: str                                   # key of its rows, images and table lines
    setting: str                                 # its `FastFace` infotext value (paste it back)
    fields: dict = field(default_factory=dict, compare=False)   # what the txt2img request sends

    @property
    def is_baseline(self) -> bool:
        return self.label == BASELINE


def _preset_name(value: Any) -> str | None:
    match = [p for p in PRESET_NAMES if isinstance(value, str) and p.lower() == value.strip().lower()]
    return match[0] if match else None


def _checked(fields: Mapping[str, Any], common: Mapping[str, Any], where: str, fail: Callable[[str], Exception]
             ) -> str:
    """The setting (infotext value) of these fields on top of the config's `fastface` table; any
    issue of the schema, even a clamp, stops the run (a sweep's value must be the value used)."""
    args, issues = validate({**common, **fields, "enabled": True})
    if issues:
        raise fail(f"{where}: {issues[0]}")
    return to_infotext(args)


def _variant(entry: Any, index: int, common: Mapping[str, Any], fail: Callable[[str], Exception]) -> Variant:
    if isinstance(entry, str):
        name = _preset_name(entry)
        if name is None:
            raise fail(f"{entry!r} is not a preset (choose from {', '.join(PRESET_NAMES)}), "
                       "or give a table {preset = ..., <field> = ...}")
        fields = {"preset": name}
        return Variant(label=name, setting=_checked(fields, common, f"variant {name!r}", fail), fields=fields)
    if not isinstance(entry, Mapping):
        raise fail(f"entry {index + 1} ({entry!r}) is neither a preset name nor a table of fields")
    fields = {k: v for k, v in entry.items() if k != "name"}
    where = f"variant {index + 1} ({entry.get('name') or fields})"
    preset = _preset_name(fields.get("preset", SWEEP_BASE))
    if preset is None:
        raise fail(f"{where}: preset {fields.get('preset')!r} is not one of {', '.join(PRESET_NAMES)}")
    for key in fields:
        if key not in FIELD_NAMES or key in NOT_SETTINGS:
            raise fail(f"{where}: {key!r} is not a FastFace setting")
    fields["preset"] = preset
    setting = _checked(fields, common, where, fail)
    name = entry.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise fail(f"{where}: name must be a non-empty string")
    return Variant(label=name.strip() if name else setting, setting=setting, fields=fields)


def expand_sweep(sweep: Mapping[str, Any], common: Mapping[str, Any], fail: Callable[[str], Exception]
                 ) -> list[Variant]:
    """The grid of a sweep table: every combination of the listed values, on top of its preset."""
    preset = _preset_name(sweep.get("preset", SWEEP_BASE))
    if preset is None:
        raise fail(f"preset {sweep.get('preset')!r} is not one of {', '.join(PRESET_NAMES)}")
    axes = {k: v for k, v in sweep.items() if k != "preset"}
    if not axes:
        raise fail("no field to sweep (e.g. alpha_peak = [1.0, 1.5, 2.0])")
    for key, values in axes.items():
        if key not in FIELD_NAMES or key in NOT_SETTINGS:
            raise fail(f"{key!r} is not a FastFace setting")
        if field_kind(key) != "float":
            raise fail(f"{key} is not a numeric field (sweep numbers; put other changes in a variant)")
        if not isinstance(values, list) or not values:
            raise fail(f"{key}: give a non-empty list of numbers, e.g. {key} = [1.0, 2.0]")
        for value in values:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise fail(f"{key}: {value!r} is not a number")
    size = 1
    for values in axes.values():
        size *= len(values)
    if size > MAX_GRID:
        raise fail(f"{size} combinations (at most {MAX_GRID})")
    out = []
    for combo in itertools.product(*axes.values()):
        fields = {"preset": preset, **dict(zip(axes, combo))}
        where = ", ".join(f"{k} = {v}" for k, v in fields.items())
        setting = _checked(fields, common, f"variant ({where})", fail)
        out.append(Variant(label=setting, setting=setting, fields=fields))
    return out


def build_variants(presets: Sequence[Any] | None, sweep: Mapping[str, Any] | None, common: Mapping[str, Any],
                   fail_presets: Callable[[str], Exception], fail_sweep: Callable[[str], Exception]) -> list[Variant]:
    """The config's variants in order, the same setting once, the baseline (Off) first if missing."""
    variants: list[Variant] = []
    if presets is not None:
        if not presets:
            raise fail_presets("empty")
        variants += [_variant(entry, i, common, fail_presets) for i, entry in enumerate(presets)]
    if sweep is not None:
        variants += expand_sweep(sweep, common, fail_sweep)
    if presets is None and sweep is None:
        variants = [_variant(name, i, common, fail_presets) for i, name in enumerate((BASELINE, "Realistic"))]
    unique: dict[str, Variant] = {}
    for variant in variants:
        if variant.setting in {v.setting for v in unique.values()}:
            continue   # the same setting twice (a sweep point equal to a listed variant): made once
        if variant.label in unique:
            raise fail_presets(f"two variants are called {variant.label!r}")
        unique[variant.label] = variant
    if BASELINE not in unique:   # Δ is measured against it
        off = _variant(BASELINE, 0, common, fail_presets)
        unique = {BASELINE: off, **{k: v for k, v in unique.items() if v.setting != off.setting}}
    return list(unique.values())
