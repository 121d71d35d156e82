"""The summary of the rows: mean ID per preset (and per category) with a percentile bootstrap
interval, FFC, Δ vs Off paired by identity, prompt and seed, seconds per image, CLIP-T; and
summary.md."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from .config import BASELINE, Config


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


def pareto_front(points: dict) -> list:
    """The labels whose (x, y) no other point beats in both (≥ in both and > in one), by x; points
    with a missing coordinate take no part."""
    valid = {k: p for k, p in points.items() if p[0] is not None and p[1] is not None}
    front = [k for k, (x, y) in valid.items()
             if not any(x2 >= x and y2 >= y and (x2 > x or y2 > y) for x2, y2 in valid.values())]
    return sorted(front, key=lambda k: (valid[k][0], valid[k][1]))


def summarize(rows: Sequence[dict], presets: Sequence[str], n_boot: int = 2000,
              clip_note: Optional[str] = None, ae_note: Optional[str] = None,
              settings: Optional[dict] = None) -> dict:
    """Per variant (and per category): images, mean ID [95 % CI], FFC, Δ vs Off [95 % CI], s/image,
    CLIP-T and AE [95 % CI]; the Pareto front of ID against CLIP-T (else AE)."""
    def stats(subset: list[dict], baseline: list[dict]) -> dict:
        ids = [_num(r["id"]) for r in subset if r.get("face_found") == "true"]
        ids = [x for x in ids if x is not None]
        secs = [x for x in (_num(r.get("seconds")) for r in subset) if x is not None]
        clips = [x for x in (_num(r.get("clip_t")) for r in subset) if x is not None]
        aes = [x for x in (_num(r.get("ae")) for r in subset) if x is not None]
        out = {"images": len(subset), "with_id": len(ids),
               "ffc": sum(1 for r in subset if r.get("face_found") == "false"),
               "no_readout": sum(1 for r in subset if r.get("face_found") not in ("true", "false")),
               "mean_id": float(np.mean(ids)) if ids else None,
               "ci95": list(bootstrap_ci(ids, n_boot)) if ids else None,
               "seconds_per_image": float(np.mean(secs)) if secs else None,
               "clip_t": float(np.mean(clips)) if clips else None,
               "clip_t_ci95": list(bootstrap_ci(clips, n_boot, seed=2)) if clips else None,
               "ae": float(np.mean(aes)) if aes else None,
               "ae_ci95": list(bootstrap_ci(aes, n_boot, seed=3)) if aes else None}
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
    summary["ae_note"] = ae_note
    summary["settings"] = {label: (settings or {}).get(label, f"preset={label}") for label in presets}
    summary["pareto"] = _fronts(summary)
    return summary


def _fronts(summary: dict) -> dict:
    """The Pareto front of ID against the second metric there is (CLIP-T, else AE), overall and per
    category; without either, the best mean ID alone."""
    blocks = {"all": summary["presets"], **summary["by_category"]}
    metric = next((m for m in ("clip_t", "ae") if any(s.get(m) is not None for s in summary["presets"].values())), None)
    fronts = {}
    for name, block in blocks.items():
        if metric is None:
            best = max((k for k in block if block[k]["mean_id"] is not None), key=lambda k: block[k]["mean_id"], default=None)
            fronts[name] = [best] if best is not None else []
        else:
            fronts[name] = pareto_front({k: (s.get(metric), s["mean_id"]) for k, s in block.items()})
    return {"metric": metric, "fronts": fronts}


def _fmt(x: Optional[float], digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


METRIC_NAMES = {"clip_t": "CLIP-T", "ae": "AE"}


def summary_markdown(summary: dict, cfg: Optional[Config] = None) -> str:
    has_clip = any(s.get("clip_t") is not None for s in summary["presets"].values())
    has_ae = any(s.get("ae") is not None for s in summary["presets"].values())
    lines = ["# FastFace eval summary", ""]
    if cfg is not None:
        lines += [f"{summary['images']} images; servers {', '.join(cfg.servers)}; {cfg.steps} steps, "
                  f"{cfg.width}×{cfg.height}, λ {cfg.lam:g}, sampler {cfg.sampler}"
                  + (f" / {cfg.scheduler}" if cfg.scheduler else "") + ".", ""]

    def table(block: dict) -> list[str]:
        """Best mean ID first (variants without an ID last)."""
        head = ("| preset | images | mean ID | 95% CI | FFC | Δ vs Off | Δ 95% CI | s/image |"
                + (" CLIP-T |" if has_clip else "") + (" AE |" if has_ae else ""))
        out = [head, "|" + "---|" * (head.count("|") - 1)]
        ranked = sorted(block, key=lambda k: (block[k]["mean_id"] is None, -(block[k]["mean_id"] or 0.0)))
        for preset in ranked:
            s = block[preset]
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
            if has_ae:
                row += f" {_fmt(s.get('ae'), 2)} |"
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
    if summary.get("ae_note"):
        lines += ["", f"AE: {summary['ae_note']}"]
    lines += ["", "The numbers depend on your checkpoint, LoRA, FaceID adapter, sampler and photos."]
    lines += _front_lines(summary, cfg)
    return "\n".join(lines) + "\n"


def _front_lines(summary: dict, cfg: Optional[Config]) -> list[str]:
    """The settings worth trying, as infotext lines to paste into the WebUI."""
    pareto = summary.get("pareto") or {}
    metric = pareto.get("metric")
    settings = summary.get("settings") or {}
    params = (f"Steps: {cfg.steps}, Sampler: {cfg.sampler}, CFG scale: {cfg.cfg_scale:g}, " if cfg is not None
              else "Steps: 4, Sampler: Euler, CFG scale: 1, ")
    title = (f"Pareto front: ID against {METRIC_NAMES[metric]}" if metric else
             "Best mean ID (no Pareto front without CLIP-T or AE)")
    lines = ["", f"## {title}", "",
             "No other variant has both a higher mean ID and a higher " + METRIC_NAMES[metric] + "." if metric else
             "Set clip_model (and aesthetic_model) for the trade-off against prompt adherence or quality.",
             "Paste a line as the last line of the prompt box and press the ↙ (read generation parameters) "
             "button: FastFace takes that setting.", ""]
    for block, front in (pareto.get("fronts") or {}).items():
        stats = summary["presets"] if block == "all" else summary["by_category"].get(block, {})
        if block != "all":
            lines += ["", f"{block}:", ""]
        for label in front:
            s = stats[label]
            second = f", {METRIC_NAMES[metric]} {_fmt(s.get(metric))}" if metric else ""
            lines += [f"- {label} (ID {_fmt(s['mean_id'])}{second}):",
                      f"  `{params}FastFace: \"{settings.get(label, 'preset=' + label)}\"`"]
    return lines
