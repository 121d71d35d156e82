"""FastFace ⇄ the one infotext value under the key `FastFace`.

    FastFace: "preset=Realistic, a=2.0, am=softmask, a_list=1.0/2.0/1.0"

The value lists the preset and then only the fields that differ from that preset, by their short
keys (`config.FastFaceArgs` metadata). A1111 JSON-quotes it because it contains commas
(`infotext_utils.quote`), and `parse_generation_parameters` unquotes it back to the inner string,
so `from_infotext` receives exactly what `to_infotext` wrote. Sub-values never contain ',' ':' or
'=' (lists use '/'), so the text also survives being split on commas naively.

Parsing never raises: unknown keys, malformed pairs and bad values are logged (one warning each)
and skipped; nothing usable at all gives the defaults (FastFace off).
"""
from __future__ import annotations

import functools
import logging
from typing import Any, Mapping, MutableMapping

from .config import (FIELDS_BY_KEY, FIELDS_BY_NAME, FIELD_NAMES, LIST_SEPARATOR, METHOD_FIELDS,
                     VIEW_FIELDS, FastFaceArgs, Issue, field_kind, meta)
from .presets import PRESETS, validate

log = logging.getLogger("fastface")

INFOTEXT_KEY = "FastFace"
# Which FastFace made the image (as ADetailer writes `ADetailer version`): written only for jobs with
# FastFace on, read by nobody, so pasting it back sets nothing (it is neither `FastFace` nor a paste key).
VERSION_KEY = INFOTEXT_KEY + " version"
# Flat keys used by the WebUI paste path: "FastFace <short key>" (word chars and spaces only,
# which is what A1111's infotext regex allows in a key).
PASTE_PREFIX = INFOTEXT_KEY + " "


def format_value(name: str, value: Any) -> str:
    kind = field_kind(name)
    if kind == "bool":
        return "true" if value else "false"
    if kind == "list":
        return LIST_SEPARATOR.join(repr(float(x)) for x in value)
    if kind == "float":
        return repr(float(value))  # shortest text that reads back to the same float
    return str(value)


def changed_fields(args: FastFaceArgs) -> list[str]:
    """The method fields whose value differs from the named preset's, in field order."""
    preset = PRESETS[args.preset]
    return [name for name in METHOD_FIELDS if getattr(args, name) != getattr(preset, name)]


def to_infotext(args: FastFaceArgs) -> str:
    """`preset=<name>` plus `key=value` for each field that differs from the preset."""
    parts = [f"preset={args.preset}"]
    if not args.enabled:
        parts.append("enabled=false")
    if args.readout != FastFaceArgs.readout:  # the readout is on by default: only "off" is written
        parts.append(f"{meta('readout')['key']}={format_value('readout', args.readout)}")
    for name in changed_fields(args):
        parts.append(f"{meta(name)['key']}={format_value(name, getattr(args, name))}")
    return ", ".join(parts)


def parse_infotext(text: Any) -> tuple[FastFaceArgs, list[Issue]]:
    """Inverse of `to_infotext`, reporting every problem instead of raising."""
    if not isinstance(text, str) or not text.strip():
        return FastFaceArgs(), [Issue(INFOTEXT_KEY, f"no FastFace settings in {text!r}", True)]
    issues: list[Issue] = []
    raw: dict[str, str] = {}
    for pair in text.strip().strip('"').split(","):
        pair = pair.strip()
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            issues.append(Issue(INFOTEXT_KEY, f"malformed entry {pair!r}", True))
        elif key not in FIELDS_BY_KEY or not FIELDS_BY_KEY[key].metadata["infotext"]:
            issues.append(Issue(key, "unknown infotext key", True))  # view options are never read
        else:
            raw[FIELDS_BY_KEY[key].name] = value
    if "preset" not in raw:
        issues.append(Issue("preset", "missing; FastFace stays off", True))
        return FastFaceArgs(), issues
    raw.setdefault("enabled", "true")  # the key's presence means FastFace was on
    args, value_issues = validate(raw)
    issues += value_issues
    if any(i.field == "preset" and i.rejected for i in value_issues):
        return FastFaceArgs(), issues
    return args, issues


def from_infotext(text: Any) -> FastFaceArgs:
    """Parse the `FastFace` infotext value; problems are logged as warnings, never raised."""
    args, issues = parse_infotext(text)
    for issue in issues:
        log.warning("[FastFace] infotext: %s", issue)
    return args


def paste_key(name: str) -> str:
    """The flat paste-field key of a field, e.g. 'FastFace a' for alpha_peak."""
    return PASTE_PREFIX + meta(name)["key"]


def expand_pasted_params(params: MutableMapping[str, Any]) -> None:
    """For the WebUI's on_infotext_pasted: add one flat key per field, in UI value form.

    Without a `FastFace` key the flat keys still get written with the toggle off, so pasting an
    image made without FastFace turns it off (the rest keep the default preset's values)."""
    args = from_infotext(params[INFOTEXT_KEY]) if INFOTEXT_KEY in params else FastFaceArgs()
    params.update({paste_key(n): v for n, v in ui_values(args).items() if n not in VIEW_FIELDS})


def ui_values(args: FastFaceArgs, prefix_keys: bool = False) -> dict[str, Any]:
    """Field values as the UI components hold them (lists as '/'-joined text)."""
    out = {}
    for name in FIELD_NAMES:
        value = getattr(args, name)
        if field_kind(name) == "list":
            value = format_value(name, value)
        out[paste_key(name) if prefix_keys else name] = value
    return out


def read_pasted(params: Mapping[str, Any], name: str) -> Any:
    """The value of one field from pasted params: the flat key if present (UI path, after
    `expand_pasted_params`), else parsed from the raw `FastFace` key (API path, which skips the
    paste callbacks)."""
    key = paste_key(name)
    if key in params:
        return params[key]
    if INFOTEXT_KEY not in params:
        return ui_values(FastFaceArgs())[name]
    text = params[INFOTEXT_KEY]
    args, issues = _parse_cached(text) if isinstance(text, str) else parse_infotext(text)
    if name == FIELD_NAMES[0]:  # one field per paste reports the problems
        for issue in issues:
            log.warning("[FastFace] infotext: %s", issue)
    return ui_values(args)[name]


# The API paste path asks once per field; parse each distinct text once (args are immutable).
_parse_cached = functools.lru_cache(maxsize=64)(parse_infotext)


assert set(FIELDS_BY_NAME) == set(FIELD_NAMES)
