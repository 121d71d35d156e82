"""`fastface-eval`: the paper's ID table on your own models, through a running WebUI's HTTP API.

    fastface-eval --config eval.toml        (or: python -m fastface.eval --config eval.toml)

It generates identities × prompts × presets × seeds with the FaceID unit and the checkpoint of
the config (one image per request), reads each image's ID from the `FastFace ID` infotext the
server's likeness readout wrote (or computes it here when the config names `face_models`), and
writes under the output folder:

    images/<identity>/<preset>/<prompt#>_<prompt>_s<seed>.png   every image, with its infotext
    results.csv        one row per image (identity, prompt, style or realistic, preset, seed, ID,
                       face found, seconds, server)
    summary.md/.json   mean ID per preset with a 95 % bootstrap interval, FFC, Δ vs Off (paired),
                       seconds per image, CLIP-T when available
    chart.png          mean ID per preset with the intervals
    contact_sheet.png  identities × presets, the ID under each image

Several servers: one job in flight per server; a server that stops answering is dropped and its
job goes to the others. A rerun with the same config resumes: images already on disk (and their
rows) are kept and not generated again. Problems are reported in one line naming the file, the
field or the item, never as a traceback (`--debug` shows it).
"""
from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import math
import os
import queue
import re
import sys
import threading
import time
import unicodedata
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .config import PRESET_NAMES

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CSV_FIELDS = ("identity", "prompt_index", "prompt", "category", "preset", "seed", "id", "face_found",
              "seconds", "server", "file", "clip_t")
ID_KEY = "FastFace ID"
BASELINE = "Off"


class EvalError(Exception):
    """A problem the user can fix; printed as one line, exit status `code`."""

    code = 1


class ConfigError(EvalError):
    code = 2


class ServerError(EvalError):
    code = 3


# -- config -----------------------------------------------------------------------------------------
@dataclass
class Config:
    path: str
    servers: list[str]
    identities: str
    prompts: str
    output: str
    unit: dict
    server_overrides: dict = field(default_factory=dict)   # url → {"unit": {...}, "controlnet_key": ...}
    presets: list[str] = field(default_factory=lambda: [BASELINE, "Realistic"])
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
    timeout: float = 900.0
    attempts: int = 2                # tries per image before it is recorded as failed
    bootstrap: int = 2000
    sheet_prompt: int = 0            # which prompt / seed the contact sheet shows
    sheet_seed: Optional[int] = None


_FIELD_TYPES = {"servers": list, "identities": str, "prompts": str, "output": str, "unit": dict,
                "presets": list, "seeds": list, "steps": int, "width": int, "height": int, "lambda": float,
                "cfg_scale": float, "sampler": str, "scheduler": str, "checkpoint": str,
                "negative_prompt": str, "prompt_suffix": str, "lowercase_prompts": bool,
                "controlnet_key": str, "merge_photos": bool, "fastface": dict, "payload": dict,
                "face_models": str, "clip_model": str, "timeout": float, "attempts": int, "bootstrap": int,
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

    if "presets" in data:
        presets = []
        for name in data["presets"]:
            match = [p for p in PRESET_NAMES if isinstance(name, str) and p.lower() == name.strip().lower()]
            if not match:
                raise bad("presets", f"{name!r} is not a preset (choose from {', '.join(PRESET_NAMES)})")
            if match[0] not in presets:
                presets.append(match[0])
        if not presets:
            raise bad("presets", "empty")
        cfg.presets = presets
    if BASELINE not in cfg.presets:
        cfg.presets.insert(0, BASELINE)  # Δ is measured against it
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
        raise bad("unit", "the FaceID unit needs 'module' (the preprocessor) and 'model' (the FaceID adapter)")
    if os.path.realpath(cfg.output) in (os.path.realpath(base), os.path.realpath(cfg.identities)):
        raise bad("output", "use a folder of its own (everything the command writes goes there)")
    return cfg


# -- inputs ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Prompt:
    index: int
    text: str

    @property
    def category(self) -> str:
        """The authors' convention: a ';' separates the style part of a style prompt."""
        return "style" if ";" in self.text else "realistic"


def read_prompts(path: str, lowercase: bool = True) -> list[Prompt]:
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the prompts ({exc})") from None
    prompts = []
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        prompts.append(Prompt(len(prompts), text.lower() if lowercase else text))
    if not prompts:
        raise ConfigError(f"{path}: no prompts (one a line; '#' starts a comment)")
    return prompts


def read_identities(folder: str) -> dict[str, list[str]]:
    """Subfolders with photos (one identity each) and loose photos (one identity each, by file stem)."""
    out: dict[str, list[str]] = {}
    for entry in sorted(os.listdir(folder)):
        full = os.path.join(folder, entry)
        if os.path.isdir(full):
            photos = sorted(os.path.join(full, f) for f in os.listdir(full) if f.lower().endswith(IMAGE_EXTS))
            if photos:
                out[entry] = photos
        elif entry.lower().endswith(IMAGE_EXTS):
            out.setdefault(os.path.splitext(entry)[0], []).append(full)
    if not out:
        raise ConfigError(f"{folder}: no identity photos (subfolders of photos, or photos, {'/'.join(IMAGE_EXTS)})")
    return out


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str, max_len: int = 48) -> str:
    """A file-name part from free text: ASCII letters, digits, '.', '_', '-' only; no leading dot;
    at most `max_len` characters (a short hash keeps shortened or emptied names distinct)."""
    ascii_text = unicodedata.normalize("NFKD", str(text)).encode("ascii", "ignore").decode()
    name = _UNSAFE.sub("_", ascii_text).strip("._-")
    name = re.sub(r"_{2,}", "_", name)
    digest = hashlib.sha1(str(text).encode("utf-8")).hexdigest()[:8]
    if not name:
        return "x" + digest
    if len(name) > max_len:
        name = name[: max_len - 9].rstrip("._-") + "_" + digest
    return name


@dataclass(frozen=True)
class Job:
    identity: str
    prompt: Prompt
    preset: str
    seed: int

    @property
    def key(self) -> tuple:
        return (self.identity, self.prompt.index, self.preset, self.seed)

    def relpath(self) -> str:
        return os.path.join("images", safe_name(self.identity), safe_name(self.preset),
                            f"{self.prompt.index:03d}_{safe_name(self.prompt.text, 40)}_s{self.seed}.png")

    def label(self) -> str:
        return f"{self.identity} / prompt {self.prompt.index} / {self.preset} / seed {self.seed}"


def make_jobs(identities: dict, prompts: Sequence[Prompt], presets: Sequence[str], seeds: Sequence[int]) -> list[Job]:
    return [Job(i, p, pr, s) for i in identities for p in prompts for s in seeds for pr in presets]


def inside(root: str, path: str) -> str:
    """`path` under `root`, refusing anything that would leave it."""
    root_real = os.path.realpath(root)
    full = os.path.realpath(os.path.join(root_real, path))
    if os.path.commonpath([root_real, full]) != root_real:
        raise EvalError(f"refusing to write outside the output folder: {path}")
    return full


# -- talking to a WebUI ------------------------------------------------------------------------------
def b64_file(path: str) -> str:
    with open(path, "rb") as fh:
        return base64.b64encode(fh.read()).decode("ascii")


def build_payload(cfg: Config, job: Job, photos: Sequence[str], server: Optional[str] = None) -> dict:
    override = cfg.server_overrides.get(server or "", {})
    unit = {"enabled": True, **cfg.unit, **override.get("unit", {}), "weight": cfg.lam}  # λ is the unit weight
    controlnet_key = override.get("controlnet_key") or cfg.controlnet_key
    if cfg.merge_photos and len(photos) > 1:
        unit["image"] = [{"image": b64_file(p), "mask": None} for p in photos]
        unit["input_mode"] = "merge"
    else:
        unit["image"] = b64_file(photos[0])
    fastface = {**cfg.fastface, "enabled": True, "preset": job.preset}
    if cfg.face_models is None:
        fastface["readout"] = True
    payload = {
        "prompt": job.prompt.text + cfg.prompt_suffix,
        "negative_prompt": cfg.negative_prompt,
        "seed": job.seed, "steps": cfg.steps, "width": cfg.width, "height": cfg.height,
        "cfg_scale": cfg.cfg_scale, "sampler_name": cfg.sampler, "batch_size": 1, "n_iter": 1,
        "send_images": True, "save_images": False,
        **cfg.payload,
        "alwayson_scripts": {**cfg.payload.get("alwayson_scripts", {}),
                             "FastFace": {"args": [fastface]},
                             controlnet_key: {"args": [unit]}},
    }
    if cfg.scheduler:
        payload["scheduler"] = cfg.scheduler
    if cfg.checkpoint:
        payload["override_settings"] = {**payload.get("override_settings", {}), "sd_model_checkpoint": cfg.checkpoint}
    return payload


class Unreachable(Exception):
    """The server did not answer (connection refused, timed out): drop it."""


class RequestFailed(Exception):
    """The server answered with an error for this request."""


def http_json(url: str, payload: Optional[dict] = None, timeout: float = 30.0) -> Any:
    data = None if payload is None else json.dumps(payload).encode("utf-8")
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                     method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:300].decode("utf-8", "replace").replace("\n", " ")
        raise RequestFailed(f"HTTP {exc.code} from {url}: {detail}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Unreachable(f"{url}: {reason}") from None
    try:
        return json.loads(body)
    except ValueError:
        raise RequestFailed(f"{url} answered something that is not JSON") from None


def check_server(server: str, cfg: Config) -> Optional[str]:
    """None when the server answers and runs FastFace and ControlNet; else why not (one line)."""
    try:
        scripts = http_json(server + "/sdapi/v1/scripts", timeout=min(cfg.timeout, 30))
    except (Unreachable, RequestFailed) as exc:
        return f"server {server} is not usable: {exc}"
    names = [str(s).lower() for s in (scripts or {}).get("txt2img", [])]
    if names and "fastface" not in names:
        return f"server {server} does not have the FastFace extension (txt2img scripts: {', '.join(names)})"
    key = cfg.server_overrides.get(server, {}).get("controlnet_key") or cfg.controlnet_key
    if names and key.lower() not in names:
        return (f"server {server} has no '{key}' script for the FaceID unit "
                f"(set controlnet_key; txt2img scripts: {', '.join(names)})")
    return None


def generate(server: str, payload: dict, timeout: float) -> tuple[bytes, str]:
    """(PNG bytes with the infotext, infotext) of the request's first image."""
    reply = http_json(server + "/sdapi/v1/txt2img", payload, timeout=timeout)
    images = reply.get("images") or []
    try:
        info = json.loads(reply.get("info") or "{}")
    except ValueError:
        info = {}
    first = int(info.get("index_of_first_image", 0) or 0)
    if len(images) <= first:
        raise RequestFailed(f"{server} returned no image")
    infotexts = info.get("infotexts") or []
    infotext = infotexts[first] if len(infotexts) > first else str(info.get("infotext", ""))
    from PIL import Image, PngImagePlugin

    try:
        image = Image.open(io.BytesIO(base64.b64decode(images[first].split(",", 1)[-1])))
        image.load()
    except Exception as exc:
        raise RequestFailed(f"{server} returned an image that does not decode ({exc})") from None
    meta = PngImagePlugin.PngInfo()
    meta.add_text("parameters", infotext)
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=meta)
    return out.getvalue(), infotext


_ID_RE = re.compile(r"(?:^|,\s*|\n)FastFace ID:\s*(\"[^\"]*\"|[^,\n]*)")


def readout_from_infotext(infotext: str) -> tuple[Optional[float], Optional[bool]]:
    """(ID, face found) from the `FastFace ID` infotext entry; (None, None) when it is absent."""
    match = _ID_RE.search(infotext or "")
    if not match:
        return None, None
    value = match.group(1).strip().strip('"')
    try:
        return float(value), True
    except ValueError:
        return None, False


# -- results -----------------------------------------------------------------------------------------
def read_rows(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise EvalError(f"{path}: cannot read the earlier results ({exc}); move it away to start afresh") from None


def row_key(row: dict) -> tuple:
    return (row["identity"], int(row["prompt_index"]), row["preset"], int(row["seed"]))


class ResultsFile:
    """results.csv, appended and flushed one row at a time (a crash loses at most the row in hand)."""

    def __init__(self, path: str):
        self.path = path
        self.lock = threading.Lock()
        new = not os.path.isfile(path) or os.path.getsize(path) == 0
        self.fh = open(path, "a", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        if new:
            self.writer.writeheader()
            self.fh.flush()

    def add(self, row: dict) -> None:
        with self.lock:
            self.writer.writerow(row)
            self.fh.flush()
            os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95
                 ) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (resampling with replacement)."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail], method="inverted_cdf")
    return float(lo), float(hi)


def _num(value) -> Optional[float]:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def summarize(rows: Sequence[dict], presets: Sequence[str], n_boot: int = 2000,
              clip_note: Optional[str] = None) -> dict:
    """Per preset (and per category): images, mean ID [95 % CI], FFC, Δ vs Off [95 % CI], s/image."""
    def stats(subset: list[dict], baseline: list[dict]) -> dict:
        ids = [_num(r["id"]) for r in subset if r.get("face_found") == "true"]
        ids = [x for x in ids if x is not None]
        secs = [x for x in (_num(r.get("seconds")) for r in subset) if x is not None]
        clips = [x for x in (_num(r.get("clip_t")) for r in subset) if x is not None]
        out = {"images": len(subset), "with_id": len(ids),
               "ffc": sum(1 for r in subset if r.get("face_found") == "false"),
               "no_readout": sum(1 for r in subset if r.get("face_found") not in ("true", "false")),
               "mean_id": float(np.mean(ids)) if ids else None,
               "ci95": list(bootstrap_ci(ids, n_boot)) if ids else None,
               "seconds_per_image": float(np.mean(secs)) if secs else None,
               "clip_t": float(np.mean(clips)) if clips else None}
        # Δ vs Off, paired on (identity, prompt, seed), both images with a face
        base = {(r["identity"], r["prompt_index"], r["seed"]): _num(r["id"]) for r in baseline
                if r.get("face_found") == "true"}
        diffs = [_num(r["id"]) - base[k] for r in subset if r.get("face_found") == "true"
                 for k in [(r["identity"], r["prompt_index"], r["seed"])] if base.get(k) is not None
                 and _num(r["id"]) is not None]
        out["delta_vs_off"] = float(np.mean(diffs)) if diffs else None
        out["delta_ci95"] = list(bootstrap_ci(diffs, n_boot, seed=1)) if diffs else None
        out["pairs"] = len(diffs)
        return out

    summary: dict = {"presets": {}, "by_category": {}}
    categories = sorted({r["category"] for r in rows})
    for preset in presets:
        mine = [r for r in rows if r["preset"] == preset]
        base = [r for r in rows if r["preset"] == BASELINE]
        summary["presets"][preset] = stats(mine, base)
        for cat in categories:
            summary["by_category"].setdefault(cat, {})[preset] = stats(
                [r for r in mine if r["category"] == cat], [r for r in base if r["category"] == cat])
    summary["images"] = len(rows)
    summary["clip_t_note"] = clip_note
    return summary


def _fmt(x: Optional[float], digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def summary_markdown(summary: dict, cfg: Optional[Config] = None) -> str:
    has_clip = any(s.get("clip_t") is not None for s in summary["presets"].values())
    lines = ["# FastFace eval summary", ""]
    if cfg is not None:
        lines += [f"{summary['images']} images; servers {', '.join(cfg.servers)}; {cfg.steps} steps, "
                  f"{cfg.width}×{cfg.height}, λ {cfg.lam:g}, sampler {cfg.sampler}"
                  + (f" / {cfg.scheduler}" if cfg.scheduler else "") + ".", ""]

    def table(block: dict) -> list[str]:
        head = "| preset | images | mean ID | 95% CI | FFC | Δ vs Off | Δ 95% CI | s/image |" + (" CLIP-T |" if has_clip else "")
        out = [head, "|" + "---|" * (head.count("|") - 1)]
        for preset, s in block.items():
            ci = s["ci95"] or [None, None]
            dci = s["delta_ci95"] or [None, None]
            delta = "0 (baseline)" if preset == BASELINE else (
                "–" if s["delta_vs_off"] is None else f"{s['delta_vs_off']:+.3f}")
            row = (f"| {preset} | {s['images']} | {_fmt(s['mean_id'])} | [{_fmt(ci[0])}, {_fmt(ci[1])}] | "
                   f"{s['ffc']} | {delta} | "
                   + ("–" if preset == BASELINE else f"[{_fmt(dci[0])}, {_fmt(dci[1])}]")
                   + f" | {_fmt(s['seconds_per_image'], 1)} |")
            if has_clip:
                row += f" {_fmt(s['clip_t'])} |"
            out.append(row)
        return out

    lines += table(summary["presets"])
    for cat, block in summary["by_category"].items():
        lines += ["", f"## {cat}", ""] + table(block)
    missing = sum(s["no_readout"] for s in summary["presets"].values())
    lines += ["", "ID: cosine similarity of insightface buffalo_l embeddings (generated image vs the identity's "
              "reference), faces[0] after det-size retries 640→320; FFC: images without a face (left out of the "
              "mean); Δ vs Off: paired by identity, prompt and seed; intervals: percentile bootstrap of the mean."]
    if missing:
        lines += ["", f"{missing} image(s) carry no `FastFace ID`: the server's likeness readout was off "
                  "(see the `FastFace note` in their infotext), or set `face_models` in the config."]
    if summary.get("clip_t_note"):
        lines += ["", f"CLIP-T: {summary['clip_t_note']}"]
    lines += ["", "The numbers depend on your checkpoint, LoRA, FaceID adapter, sampler and photos."]
    return "\n".join(lines) + "\n"


# -- pictures (Pillow only) -----------------------------------------------------------------------------
def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def bar_chart(summary: dict, path: str) -> None:
    from PIL import Image, ImageDraw

    stats = summary["presets"]
    names = list(stats)
    width, height, left, bottom, top = max(560, 120 + 140 * len(names)), 460, 70, 90, 50
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(16), _font(13)
    draw.text((left, 12), "Mean ID similarity per preset (95% bootstrap CI)", fill="black", font=font)
    values = [v for s in stats.values() for v in ([s["mean_id"]] + (s["ci95"] or [])) if v is not None]
    vmax = max([0.0] + values)
    vmin = min([0.0] + values)
    span = max(vmax - vmin, 1e-6) * 1.1
    plot_h = height - top - bottom

    def y(v: float) -> float:
        return top + plot_h * (1 - (v - vmin) / span)

    draw.line([(left, top), (left, height - bottom)], fill="black")
    draw.line([(left, y(0.0)), (width - 20, y(0.0))], fill="black")
    raw = span / 4
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)  # 1-2-5 ticks, 0 among them
    digits = max(2, -int(math.floor(math.log10(step))))
    for tick in np.arange(math.ceil(vmin / step) * step, vmin + span + step * 1e-6, step):
        draw.line([(left - 5, y(tick)), (left, y(tick))], fill="black")
        draw.text((8, y(tick) - 7), f"{tick + 0.0:.{digits}f}", fill="black", font=small)
    for i, name in enumerate(names):
        s = stats[name]
        x0 = left + 30 + i * 140
        if s["mean_id"] is not None:
            color = (150, 150, 150) if name == BASELINE else (60, 110, 200)
            draw.rectangle([x0, min(y(s["mean_id"]), y(0.0)), x0 + 80, max(y(s["mean_id"]), y(0.0))], fill=color)
            if s["ci95"]:
                lo, hi = s["ci95"]
                cx = x0 + 40
                draw.line([(cx, y(lo)), (cx, y(hi))], fill="black", width=2)
                draw.line([(cx - 10, y(lo)), (cx + 10, y(lo))], fill="black", width=2)
                draw.line([(cx - 10, y(hi)), (cx + 10, y(hi))], fill="black", width=2)
            draw.text((x0 + 54, y(max(s["mean_id"], 0.0)) - 20), f"{s['mean_id']:.3f}", fill="black", font=small)
        draw.text((x0 - 10, height - bottom + 8), name[:18], fill="black", font=small)
        draw.text((x0 - 10, height - bottom + 26), f"n={s['with_id']} FFC={s['ffc']}", fill=(90, 90, 90), font=small)
    img.save(path)


def contact_sheet(rows: Sequence[dict], identities: dict, presets: Sequence[str], out_root: str, path: str,
                  prompt_index: int = 0, seed: Optional[int] = None, cell: int = 192) -> None:
    """Identities × (reference photo, presets); the image of one prompt and seed, its ID under it."""
    from PIL import Image, ImageDraw, ImageOps

    chosen = {}
    seeds = sorted({int(r["seed"]) for r in rows})
    seed = seed if seed is not None else (seeds[0] if seeds else None)
    for r in rows:
        if int(r["prompt_index"]) == prompt_index and int(r["seed"]) == seed:
            chosen[(r["identity"], r["preset"])] = r
    names = list(identities)
    label_h, head_h, side, foot_h = 34, 30, 130, 30
    img = Image.new("RGB", (side + cell * (len(presets) + 1), head_h + (cell + label_h) * len(names) + foot_h), "white")
    draw = ImageDraw.Draw(img)
    font = _font(14)
    prompt_text = next((r["prompt"] for r in rows if int(r["prompt_index"]) == prompt_index), "")
    draw.text((6, img.height - foot_h + 6), f"prompt {prompt_index}, seed {seed}: {prompt_text}"[:160],
              fill=(60, 60, 60), font=font)
    for j, title in enumerate(["reference"] + list(presets)):
        draw.text((side + j * cell + 6, 8), title[:22], fill="black", font=font)
    for i, name in enumerate(names):
        y0 = head_h + i * (cell + label_h)
        draw.text((6, y0 + cell // 2 - 8), name[:16], fill="black", font=font)
        tiles = [(identities[name][0], "")]
        for preset in presets:
            r = chosen.get((name, preset))
            if r is None:
                tiles.append((None, "missing"))
                continue
            score = _num(r.get("id"))
            text = f"ID {score:.3f}" if r.get("face_found") == "true" and score is not None else (
                "no face" if r.get("face_found") == "false" else "no readout")
            tiles.append((os.path.join(out_root, r["file"]), text))
        for j, (file, text) in enumerate(tiles):
            x0 = side + j * cell
            if file and os.path.isfile(file):
                try:
                    with Image.open(file) as tile:
                        tile = ImageOps.contain(tile.convert("RGB"), (cell - 8, cell - 8))
                        img.paste(tile, (x0 + (cell - tile.width) // 2, y0 + (cell - tile.height) // 2))
                except Exception:
                    text = text or "unreadable"
            else:
                draw.rectangle([x0 + 4, y0 + 4, x0 + cell - 4, y0 + cell - 4], outline=(200, 200, 200))
            draw.text((x0 + 6, y0 + cell + 6), text, fill="black", font=font)
    img.save(path)


# -- CLIP-T (optional) ------------------------------------------------------------------------------------
class ClipScorer:
    """Cosine similarity of CLIP ViT-L/14 image and prompt features (the paper's CLIP-T), from a local
    transformers-layout folder; never downloads."""

    def __init__(self, folder: str):
        import torch
        from transformers import CLIPModel, CLIPProcessor

        self.torch = torch
        self.model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
        self.processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)

    def __call__(self, image, prompt: str) -> float:
        with self.torch.no_grad():
            batch = self.processor(text=[prompt], images=[image], return_tensors="pt", padding=True, truncation=True)
            img = self.model.get_image_features(pixel_values=batch["pixel_values"])
            txt = self.model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            img = img / img.norm(dim=-1, keepdim=True)
            txt = txt / txt.norm(dim=-1, keepdim=True)
            return float((img * txt).sum())


def load_clip(cfg: Config) -> tuple[Optional[Callable], str]:
    if not cfg.clip_model:
        return None, "not computed (set clip_model to a local CLIP ViT-L/14 folder to add it)"
    if not os.path.isdir(cfg.clip_model):
        return None, f"not computed: {cfg.clip_model} does not exist"
    try:
        return ClipScorer(cfg.clip_model), f"CLIP ViT-L/14 from {cfg.clip_model}"
    except Exception as exc:
        return None, f"not computed: the CLIP model in {cfg.clip_model} did not load ({type(exc).__name__}: {exc})"


# -- the run -------------------------------------------------------------------------------------------------
@dataclass
class RunState:
    done: int = 0
    failed: list = field(default_factory=list)
    dropped: list = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _progress(total: int, initial: int):
    try:
        from tqdm import tqdm
        return tqdm(total=total, initial=initial, unit="img", desc="fastface-eval", dynamic_ncols=True)
    except ImportError:
        class Plain:
            def __init__(self):
                self.n = initial

            def update(self, k=1):
                self.n += k
                print(f"fastface-eval: {self.n}/{total}", flush=True)

            def set_postfix_str(self, *_a, **_k):
                pass

            def close(self):
                pass
        return Plain()


def run(cfg: Config, out=print) -> dict:
    """Generate what is missing, then write the summary and the pictures. Returns the summary."""
    identities = read_identities(cfg.identities)
    prompts = read_prompts(cfg.prompts, cfg.lowercase_prompts)
    jobs = make_jobs(identities, prompts, cfg.presets, cfg.seeds)
    os.makedirs(cfg.output, exist_ok=True)
    results_path = inside(cfg.output, "results.csv")
    earlier = read_rows(results_path)
    done = {}
    for row in earlier:
        try:
            if os.path.isfile(inside(cfg.output, row["file"])):
                done[row_key(row)] = row
        except (KeyError, ValueError, EvalError):
            continue
    todo = [j for j in jobs if j.key not in done]
    out(f"fastface-eval: {len(jobs)} images ({len(identities)} identities × {len(prompts)} prompts × "
        f"{len(cfg.presets)} presets × {len(cfg.seeds)} seeds); {len(jobs) - len(todo)} already on disk")

    face_model = None
    references: dict = {}
    if cfg.face_models and todo:
        from .likeness import FaceModel
        try:
            face_model = FaceModel.from_folder(cfg.face_models)
        except (FileNotFoundError, ImportError) as exc:
            raise ConfigError(f"{cfg.path}: field 'face_models': {exc}") from None
        from PIL import Image
        for name, photos in identities.items():
            references[name] = face_model.reference(Image.open(p).convert("RGB") for p in photos)
    if todo:
        clip, clip_note = load_clip(cfg)
    else:  # nothing to generate: the CSV holds whatever CLIP-T earlier runs computed
        clip = None
        clip_note = (f"CLIP ViT-L/14 from {cfg.clip_model}" if cfg.clip_model
                     else "not computed (set clip_model to a local CLIP ViT-L/14 folder to add it)")

    if todo:
        servers = []
        for server in cfg.servers:
            problem = check_server(server, cfg)
            if problem:
                out("fastface-eval: " + problem)
            else:
                servers.append(server)
        if not servers:
            raise ServerError("no usable server (" + ", ".join(cfg.servers) + "); nothing was generated")
        failed = _generate_all(cfg, todo, servers, identities, results_path, face_model, references, clip, out,
                               initial=len(jobs) - len(todo), total=len(jobs))
    else:
        failed = []

    rows = [r for r in read_rows(results_path) if row_key(r) in {j.key for j in jobs}]
    rows = list({row_key(r): r for r in rows}.values())  # a resumed run may have re-added a row
    summary = summarize(rows, cfg.presets, cfg.bootstrap, clip_note)
    summary["failed"] = failed
    md = summary_markdown(summary, cfg)
    with open(inside(cfg.output, "summary.md"), "w", encoding="utf-8") as fh:
        fh.write(md)
    with open(inside(cfg.output, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2)
    bar_chart(summary, inside(cfg.output, "chart.png"))
    contact_sheet(rows, identities, cfg.presets, os.path.realpath(cfg.output), inside(cfg.output, "contact_sheet.png"),
                  prompt_index=cfg.sheet_prompt, seed=cfg.sheet_seed)
    out(md)
    return summary


def _generate_all(cfg, todo, servers, identities, results_path, face_model, references, clip, out, initial, total):
    pending: "queue.Queue[tuple[Job, int]]" = queue.Queue()
    for job in todo:
        pending.put((job, 0))
    state = RunState()
    results = ResultsFile(results_path)
    bar = _progress(total, initial)
    alive = set(servers)
    stop = threading.Event()

    def finish() -> None:
        with state.lock:
            state.done += 1
            bar.update(1)

    def worker(server: str) -> None:
        while not stop.is_set():
            try:
                job, tries = pending.get(timeout=0.2)
            except queue.Empty:
                with state.lock:
                    if state.done + len(state.failed) >= len(todo):
                        return
                continue
            try:
                started = time.monotonic()
                png, infotext = generate(server, build_payload(cfg, job, identities[job.identity], server), cfg.timeout)
                seconds = time.monotonic() - started
                target = inside(cfg.output, job.relpath())
                os.makedirs(os.path.dirname(target), exist_ok=True)
                tmp = target + ".part"
                with open(tmp, "wb") as fh:
                    fh.write(png)
                os.replace(tmp, target)  # an interrupted write never leaves a half image under the real name
                score, found = readout_from_infotext(infotext)
                clip_t = None
                if face_model is not None or clip is not None:
                    from PIL import Image
                    with Image.open(io.BytesIO(png)) as im:
                        image = im.convert("RGB")
                    if face_model is not None:
                        emb = face_model.embed(image)
                        ref = references.get(job.identity)
                        found = emb is not None and ref is not None
                        score = float(np.dot(ref, emb)) if found else None
                    if clip is not None:
                        clip_t = clip(image, job.prompt.text)
                results.add({"identity": job.identity, "prompt_index": job.prompt.index, "prompt": job.prompt.text,
                             "category": job.prompt.category, "preset": job.preset, "seed": job.seed,
                             "id": "" if score is None else f"{score:.4f}",
                             "face_found": "" if found is None else ("true" if found else "false"),
                             "seconds": f"{seconds:.2f}", "server": server, "file": job.relpath(),
                             "clip_t": "" if clip_t is None else f"{clip_t:.4f}"})
                finish()
            except Unreachable as exc:
                pending.put((job, tries))  # not the job's fault: another server takes it
                with state.lock:
                    alive.discard(server)
                    state.dropped.append(server)
                    bar_msg = f"server {server} dropped ({exc}); {len(alive)} left"
                out("\nfastface-eval: " + bar_msg)
                if not alive:
                    stop.set()
                return
            except RequestFailed as exc:
                if tries + 1 < cfg.attempts:
                    pending.put((job, tries + 1))
                else:
                    with state.lock:
                        state.failed.append(f"{job.label()}: {exc}")
                    out(f"\nfastface-eval: {job.label()} failed: {exc}")
            except EvalError as exc:
                with state.lock:
                    state.failed.append(f"{job.label()}: {exc}")
            except Exception as exc:  # keep going; report the item
                with state.lock:
                    state.failed.append(f"{job.label()}: {type(exc).__name__}: {exc}")
                out(f"\nfastface-eval: {job.label()} failed: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(s,), daemon=True, name=f"eval {s}") for s in servers]
    try:
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=0.5)
    except KeyboardInterrupt:
        stop.set()
        raise
    finally:
        bar.close()
        results.close()
    if not alive and state.done + len(state.failed) < len(todo):
        raise ServerError(f"every server stopped answering ({', '.join(state.dropped)}); "
                          f"{initial + state.done} of {total} images are on disk; run the same command again to resume")
    if state.failed:
        out(f"fastface-eval: {len(state.failed)} image(s) failed (they are left out; rerun to retry them):")
        for line in state.failed[:20]:
            out("  " + line)
    return list(state.failed)


# -- command line --------------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fastface-eval",
        description="Measure identity likeness (the FastFace paper's ID metric) of FastFace presets on your own "
                    "models through a running WebUI's API. Resumes an interrupted run from its output folder.")
    parser.add_argument("--config", required=True, help="JSON or TOML config (see the README's 'Measure it')")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
        summary = run(cfg)
    except EvalError as exc:
        print(f"fastface-eval: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("\nfastface-eval: interrupted; what is on disk is kept; run the same command again to resume",
              file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"fastface-eval: internal error ({type(exc).__name__}: {exc}); --debug shows where", file=sys.stderr)
        return 1
    return 4 if summary.get("failed") else 0


if __name__ == "__main__":  # python -m fastface.eval
    sys.exit(main())
