"""The config file of `fastface-eval` (JSON or TOML): its fields, their checks, and the errors the
command reports in one line (`EvalError` and its exit codes)."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Optional

from .variants import BASELINE, Variant, build_variants


class EvalError(Exception):
    """A problem the user can fix; printed as one line, exit status `code`."""

    code = 1


class ConfigError(EvalError):
    code = 2


class ServerError(EvalError):
    code = 3


@dataclass
class Config:
    path: str
    servers: list[str]
    identities: str
    prompts: str
    output: str
    unit: dict
    units_after: list = field(default_factory=list)   # ControlNet units sent after it (InstantID's keypoints)
    server_overrides: dict = field(default_factory=dict)   # url → {"unit": {...}, "controlnet_key": ...}
    presets: list[str] = field(default_factory=lambda: [BASELINE, "Realistic"])   # the variants' labels, in order
    variants: list[Variant] = field(default_factory=list)   # what each label sends (fastface.eval.variants)
    seeds: list[int] = field(default_factory=lambda: [50])
    steps: int = 4
    width: int = 1024
    height: int = 1024
    lam: float = 0.8
    cfg_scale: float = 1.0
    sampler: str = "Euler"
    scheduler: Optional[str] = None
    checkpoint: Optional[str] = None
    negative_prompt: str = ""
    prompt_suffix: str = ""          # e.g. the FaceID LoRA: ", <lora:ip-adapter-faceid-plusv2_sdxl_lora:1>"
    lowercase_prompts: bool = True   # the authors' `.strip().lower()`
    controlnet_key: str = "controlnet"
    merge_photos: bool = False       # send every photo of an identity in one unit (A1111 merge mode)
    fastface: dict = field(default_factory=dict)   # extra FastFace fields for every preset
    payload: dict = field(default_factory=dict)    # extra top-level txt2img fields
    face_models: Optional[str] = None   # compute the ID here instead of reading the server's readout
    clip_model: Optional[str] = None    # local CLIP ViT-L/14 folder (transformers layout) for CLIP-T
    aesthetic_model: Optional[str] = None   # local LAION aesthetic predictor weights (AE), on clip_model's embeddings
    timeout: float = 900.0
    attempts: int = 2                # tries per image before it is recorded as failed
    bootstrap: int = 2000
    sheet_prompt: int = 0            # which prompt / seed the contact sheet shows
    sheet_seed: Optional[int] = None


_FIELD_TYPES = {"servers": list, "identities": str, "prompts": str, "output": str, "unit": dict, "units_after": list,
                "presets": list, "seeds": list, "steps": int, "width": int, "height": int, "lambda": float,
                "cfg_scale": float, "sampler": str, "scheduler": str, "checkpoint": str,
                "negative_prompt": str, "prompt_suffix": str, "lowercase_prompts": bool,
                "controlnet_key": str, "merge_photos": bool, "fastface": dict, "payload": dict,
                "face_models": str, "clip_model": str, "aesthetic_model": str, "sweep": dict, "timeout": float, "attempts": int, "bootstrap": int,
                "sheet_prompt": int, "sheet_seed": int, "server": str}
REQUIRED = ("identities", "prompts", "output", "unit")


def _read_config_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: no such config file")
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if path.lower().endswith(".toml"):
        try:
            import tomllib
        except ImportError:  # Python 3.10
            try:
                import tomli as tomllib
            except ImportError:
                raise ConfigError(f"{path}: TOML needs Python 3.11 or the tomli package; use JSON") from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except Exception as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    else:
        try:
            data = json.loads(raw.decode("utf-8"))
        except Exception as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a table/object of fields")
    return data


def load_config(path: str) -> Config:
    data = _read_config_file(path)
    base = os.path.dirname(os.path.abspath(path))

    def bad(name: str, why: str) -> ConfigError:
        return ConfigError(f"{path}: field '{name}': {why}")

    unknown = sorted(set(data) - set(_FIELD_TYPES))
    if unknown:
        raise bad(unknown[0], f"unknown field (known: {', '.join(sorted(_FIELD_TYPES))})")
    for name in REQUIRED:
        if name not in data:
            raise bad(name, "missing" + (" (the FaceID unit, e.g. {module=..., model=...})" if name == "unit" else ""))
    if "server" not in data and "servers" not in data:
        raise bad("servers", "missing (e.g. servers = [\"http://127.0.0.1:7860\"])")
    for name, value in data.items():
        want = _FIELD_TYPES[name]
        ok = isinstance(value, want) and not (want in (int, float) and isinstance(value, bool))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise bad(name, f"expected {want.__name__}, got {value!r}")

    entries = list(data.get("servers", [])) + ([data["server"]] if "server" in data else [])
    if not entries:
        raise bad("servers", "no server given")
    servers, overrides = [], {}
    for entry in entries:
        # a URL, or a table {url = ..., unit = {...}, controlnet_key = ...} for a server whose
        # ControlNet differs (e.g. an A1111 and a Forge in one run)
        extra = {}
        if isinstance(entry, dict):
            extra = {k: v for k, v in entry.items() if k != "url"}
            unknown_keys = sorted(set(extra) - {"unit", "controlnet_key"})
            if unknown_keys:
                raise bad("servers", f"unknown key {unknown_keys[0]!r} in {entry!r} (url, unit, controlnet_key)")
            if not isinstance(extra.get("unit", {}), dict) or not isinstance(extra.get("controlnet_key", ""), str):
                raise bad("servers", f"{entry!r}: unit must be a table and controlnet_key a string")
            entry = entry.get("url")
        if not isinstance(entry, str) or not re.match(r"^https?://[^/\s]+", entry):
            raise bad("servers", f"{entry!r} is not an http(s) URL")
        url = entry.rstrip("/")
        if url in overrides:
            raise bad("servers", f"{url} is listed twice")
        servers.append(url)
        overrides[url] = extra

    def path_field(name: str, must_exist: bool, kind: str) -> Optional[str]:
        if data.get(name) in (None, ""):
            return None
        p = os.path.normpath(os.path.join(base, os.path.expanduser(data[name])))
        if must_exist and not (os.path.isdir(p) if kind == "dir" else os.path.isfile(p)):
            raise bad(name, f"{p} does not exist" + ("" if kind == "file" else " (or is not a folder)"))
        return p

    cfg = Config(path=path, servers=servers, identities=path_field("identities", True, "dir"),
                 prompts=path_field("prompts", True, "file"), output=path_field("output", False, ""),
                 unit=dict(data["unit"]), server_overrides=overrides)
    for name in ("steps", "width", "height", "cfg_scale", "sampler", "scheduler", "checkpoint", "negative_prompt",
                 "prompt_suffix", "lowercase_prompts", "controlnet_key", "merge_photos", "fastface", "payload",
                 "timeout", "attempts", "bootstrap", "sheet_prompt", "sheet_seed"):
        if name in data:
            setattr(cfg, name, data[name])
    if "lambda" in data:
        cfg.lam = float(data["lambda"])
    cfg.face_models = path_field("face_models", True, "dir")
    cfg.clip_model = data.get("clip_model") and os.path.normpath(os.path.join(base, os.path.expanduser(data["clip_model"])))

    cfg.aesthetic_model = path_field("aesthetic_model", True, "file")
    cfg.variants = build_variants(data.get("presets"), data.get("sweep"), cfg.fastface,
                                  lambda why: bad("presets", why), lambda why: bad("sweep", why))
    cfg.presets = [v.label for v in cfg.variants]
    if "seeds" in data:
        if not data["seeds"] or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in data["seeds"]):
            raise bad("seeds", "a non-empty list of non-negative integers")
        cfg.seeds = list(dict.fromkeys(data["seeds"]))
    for name, lo, hi in (("steps", 1, 1000), ("width", 64, 8192), ("height", 64, 8192), ("attempts", 1, 20),
                         ("bootstrap", 100, 1_000_000)):
        if not lo <= getattr(cfg, name) <= hi:
            raise bad(name, f"{getattr(cfg, name)} is outside [{lo}, {hi}]")
    if not 0.0 <= cfg.lam <= 5.0:
        raise bad("lambda", f"{cfg.lam} is outside [0, 5]")
    if cfg.timeout <= 0:
        raise bad("timeout", "must be positive")
    if not cfg.unit.get("model") or not cfg.unit.get("module"):
        raise bad("unit", "the identity unit needs 'module' (the preprocessor) and 'model' (the FaceID, PuLID or "
                  "InstantID IP-Adapter)")
    for unit in data.get("units_after", []):
        # e.g. InstantID's keypoint ControlNet, which sd-webui-controlnet wants right after the
        # IP-Adapter unit (controlnet.py L1188-1197); without an image it gets the identity's photo
        if not isinstance(unit, dict) or not unit.get("module") or not unit.get("model"):
            raise bad("units_after", f"{unit!r}: each unit is a table with 'module' and 'model'")
    cfg.units_after = [dict(u) for u in data.get("units_after", [])]
    if os.path.realpath(cfg.output) in (os.path.realpath(base), os.path.realpath(cfg.identities)):
        raise bad("output", "use a folder of its own (everything the command writes goes there)")
    return cfg


def variant_of(cfg: Config, label: str) -> Variant:
    """The variant a job's label names (a bare preset name when the config was built by hand)."""
    for variant in cfg.variants:
        if variant.label == label:
            return variant
    return Variant(label=label, setting=f"preset={label}", fields={"preset": label})
