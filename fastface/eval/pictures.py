"""chart.png (mean ID per preset with its interval) and contact_sheet.png (identities × presets,
the ID under each image); Pillow only, imported when a picture is drawn."""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import numpy as np

from .config import BASELINE
from .stats import METRIC_NAMES, _num


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


def pareto_chart(summary: dict, path: str, block: str = "all") -> bool:
    """pareto.png: mean ID (y) against CLIP-T, else AE (x), each with its 95 % interval; the
    Pareto front joined and drawn in red; `block` a category (realistic / style) instead of all
    images. Not drawn (False) when neither metric was computed."""
    from PIL import Image, ImageDraw

    pareto = summary.get("pareto") or {}
    metric = pareto.get("metric")
    if metric is None:
        return False
    stats = summary["presets"] if block == "all" else summary["by_category"].get(block, {})
    points = {k: s for k, s in stats.items() if s["mean_id"] is not None and s.get(metric) is not None}
    front = [k for k in (pareto.get("fronts") or {}).get(block, []) if k in points]
    legend_w = 340   # the labels, numbered, beside the plot: long settings never overlap the points
    width, height, left, right, top, bottom = 760 + legend_w, 560, 80, 30 + legend_w, 50, 70
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font, small = _font(16), _font(12)
    name = METRIC_NAMES[metric]
    subset = "" if block == "all" else f" ({block} prompts)"
    draw.text((left, 12), f"Mean ID against {name} per variant{subset}, 95% bootstrap CI; red: the Pareto front",
              fill="black", font=font)
    xs = [v for s in points.values() for v in [s[metric]] + list(s.get(metric + "_ci95") or [])]
    ys = [v for s in points.values() for v in [s["mean_id"]] + list(s["ci95"] or [])]
    if not xs:
        img.save(path)
        return True
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = min(ys), max(ys)
    x_pad, y_pad = max(x_hi - x_lo, 1e-3) * 0.08, max(y_hi - y_lo, 1e-3) * 0.08
    x_lo, x_hi, y_lo, y_hi = x_lo - x_pad, x_hi + x_pad, y_lo - y_pad, y_hi + y_pad

    def px(v: float) -> float:
        return left + (width - left - right) * (v - x_lo) / (x_hi - x_lo)

    def py(v: float) -> float:
        return top + (height - top - bottom) * (1 - (v - y_lo) / (y_hi - y_lo))

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        xv, yv = x_lo + frac * (x_hi - x_lo), y_lo + frac * (y_hi - y_lo)
        draw.text((px(xv) - 18, height - bottom + 6), f"{xv:.3f}", fill="black", font=small)
        draw.text((8, py(yv) - 7), f"{yv:.3f}", fill="black", font=small)
    draw.text(((width - len(name) * 7) // 2, height - 30), name, fill="black", font=font)
    draw.text((8, top - 22), "mean ID", fill="black", font=small)
    line = [(px(points[k][metric]), py(points[k]["mean_id"])) for k in front]
    if len(line) > 1:
        draw.line(line, fill=(210, 60, 50), width=2)
    for number, (label, s) in enumerate(points.items(), 1):
        x, y = px(s[metric]), py(s["mean_id"])
        color = (210, 60, 50) if label in front else ((150, 150, 150) if label == BASELINE else (60, 110, 200))
        if s.get(metric + "_ci95"):
            lo, hi = s[metric + "_ci95"]
            draw.line([(px(lo), y), (px(hi), y)], fill=color, width=1)
        if s["ci95"]:
            lo, hi = s["ci95"]
            draw.line([(x, py(lo)), (x, py(hi))], fill=color, width=1)
        draw.ellipse([x - 5, y - 5, x + 5, y + 5], fill=color)
        draw.text((x + 6, y - 17), str(number), fill=color, font=small)
        draw.text((width - legend_w + 10, top + 18 * (number - 1)),
                  f"{number}  {label[:44]}" + ("  (front)" if label in front else ""), fill=color, font=small)
    img.save(path)
    return True
