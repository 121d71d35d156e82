"""Draw recorded face-attention maps (`views.attnmaps.ImageMaps`) as one preview image.

Layout (one image per generated image):

    title line
    header:            step 1/4            step 2/4   …
                   before | after AM   before | after AM
    [pass title]   (only when the job had a hires pass)
    down           [panel | panel]     [panel | panel]
                   caption: transform, before min-max | after min-max
    mid            …
    up             …
    down token 0   (FaceID-Plus: the background token of Plus-v2, its own rows)
    …

A *panel* is one mosaic of token heatmaps per token group (`attnmaps.TokenLayout`): FaceID and
Plus v1 show all 4 tokens as a 2×2 mosaic, Plus-v2 shows tokens 1-3 and token 0 in rows of its
own, Portrait shows each face's 16 tokens as a 4×4 mosaic, faces side by side. Each tile is the
token's map (mean over heads and the part's layers) overlaid on the generated image. One panel's
tiles share one colour scale (its min-max is in the caption), so the tiles show which token
dominates where; before and after are scaled separately (AM changes the range).

Sizes: the image is scaled to `panel` px on its longer side (pw × ph); a tile of a c-column mosaic
is (pw // c) × (ph // c). Width = LABEL_W + steps · (2 · groups · pw + CELL_GAP) + MARGIN;
height = TITLE_H + HEADER_H + rows · (ph + CAPTION_H) + pass titles · PASS_H + MARGIN — see
`preview_size`. Text uses PIL's default font, ASCII only (the bitmap font of older Pillow has
nothing else).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .attnmaps import PARTS, ImageMaps, PartMaps, TokenLayout, mosaic_shape

LABEL_W = 110
TITLE_H = 22
HEADER_H = 30
CAPTION_H = 28
PASS_H = 18
CELL_GAP = 12
MARGIN = 8
ALPHA = 0.6
BACKGROUND = (24, 24, 28)
TEXT = (235, 235, 235)
DIM = (160, 160, 170)

# Anchors of a turbo-like colour map (dark blue → teal → yellow → dark red).
_ANCHORS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_COLOURS = np.array([(48, 18, 59), (70, 134, 251), (27, 229, 181), (251, 185, 56), (122, 4, 3)], dtype=np.float32)


def colourise(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (H, W) → RGB uint8 (H, W, 3)."""
    v = np.clip(values, 0.0, 1.0)
    rgb = np.stack([np.interp(v, _ANCHORS, _COLOURS[:, c]) for c in range(3)], axis=-1)
    return rgb.astype(np.uint8)


def panel_size(image_size: tuple[int, int], panel: int) -> tuple[int, int]:
    w, h = image_size
    scale = panel / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _rows(maps: ImageMaps, layout: TokenLayout) -> list[tuple[int, str, Optional[int]]]:
    """(pass, part, separate token or None) for every row, in drawing order."""
    rows = []
    for pass_index in sorted(maps.passes):
        steps = maps.passes[pass_index]
        parts = [p for p in PARTS if any(p in cells for cells in steps.values())]
        rows += [(pass_index, part, None) for part in parts]
        rows += [(pass_index, part, token) for token in layout.separate for part in parts]
    return rows


def preview_size(image_size: tuple[int, int], maps: ImageMaps, layout: TokenLayout, panel: int = 160) -> tuple[int, int]:
    """The (width, height) `render_grid` produces; documented in the module docstring."""
    pw, ph = panel_size(image_size, panel)
    steps = max((len(s) for s in maps.passes.values()), default=0)
    groups = len(layout.groups)
    rows = len(_rows(maps, layout))
    passes = len(maps.passes) if len(maps.passes) > 1 else 0
    width = LABEL_W + steps * (2 * groups * pw + CELL_GAP) + MARGIN
    height = TITLE_H + HEADER_H + rows * (ph + CAPTION_H) + passes * PASS_H + MARGIN
    return width, height


def _font():
    return ImageFont.load_default()


def _tile(base: Image.Image, values: np.ndarray, lo: float, hi: float, size: tuple[int, int]) -> Image.Image:
    """One token map (H, W) scaled by [lo, hi], coloured and blended over the image."""
    span = hi - lo
    norm = (values - lo) / span if span > 0 else np.zeros_like(values)
    heat = Image.fromarray(colourise(norm)).resize(size, Image.BILINEAR)
    return Image.blend(base.resize(size, Image.BILINEAR), heat, ALPHA)


def _panel(image: Image.Image, maps: np.ndarray, tokens: Sequence[int], groups: Sequence[Sequence[int]],
           pw: int, ph: int) -> tuple[Image.Image, float, float]:
    """Mosaics of `groups` side by side (tokens index `maps` (T, H, W)); shared min-max."""
    chosen = maps[list(tokens)]
    lo, hi = float(chosen.min()), float(chosen.max())
    out = Image.new("RGB", (pw * len(groups), ph), BACKGROUND)
    for g, group in enumerate(groups):
        rows, cols = mosaic_shape(len(group))
        tw, th = max(1, pw // cols), max(1, ph // cols)
        y0 = (ph - rows * th) // 2
        for i, token in enumerate(group):
            r, c = divmod(i, cols)
            out.paste(_tile(image, maps[token], lo, hi, (tw, th)), (g * pw + c * tw, y0 + r * th))
    return out, lo, hi


def cell_caption(step: int, part: str, cell: PartMaps, ranges: Sequence[str]) -> tuple[str, str]:
    """The two caption lines under a cell: (step, part, transform) and the panels' min-max."""
    label = cell.label if cell.transformed else "no AM (after = before)"
    return f"s{step + 1} {part}: {label}", f"min-max {ranges[0]} | {ranges[1]}"


def render_grid(image: Image.Image, maps: ImageMaps, layout: TokenLayout, panel: int = 160,
                title: str = "", labels: Optional[list] = None) -> Image.Image:
    """The preview of one generated image (see the module docstring for the layout). `labels`, if
    given, receives every (x, y, text) drawn."""
    image = image.convert("RGB")

    def _text(draw, xy, text, fill=TEXT):
        draw.text(xy, text, fill=fill, font=_font())
        if labels is not None:
            labels.append((xy[0], xy[1], text))

    pw, ph = panel_size(image.size, panel)
    width, height = preview_size(image.size, maps, layout, panel)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    n_steps = max((len(s) for s in maps.passes.values()), default=0)
    groups = len(layout.groups)
    cell_w = 2 * groups * pw + CELL_GAP
    heading = title or f"FastFace face attention - image {maps.image + 1} - {layout.kind}, {maps.tokens} tokens"
    _text(draw, (MARGIN, 5), heading + "   (mean over heads and layers; colour scale per panel)")
    for s in range(n_steps):
        x = LABEL_W + s * cell_w
        _text(draw, (x, TITLE_H), f"step {s + 1}/{n_steps}")
        names = "" if groups == 1 else " (" + " | ".join(name for name, _ in layout.groups) + ")"
        _text(draw, (x, TITLE_H + 13), "before" + names, DIM)
        _text(draw, (x + groups * pw, TITLE_H + 13), "after AM" + names, DIM)
    y = TITLE_H + HEADER_H
    face_tokens = [t for _, group in layout.groups for t in group]
    face_groups = [group for _, group in layout.groups]
    current_pass = None
    for pass_index, part, token in _rows(maps, layout):
        if pass_index != current_pass:
            current_pass = pass_index
            if len(maps.passes) > 1:
                _text(draw, (MARGIN, y + 3), maps.pass_names.get(pass_index, f"pass {pass_index + 1}"), DIM)
                y += PASS_H
        _text(draw, (MARGIN, y + ph // 2 - 6), part if token is None else f"{part} token {token}")
        if token is not None:
            _text(draw, (MARGIN, y + ph // 2 + 8), "(background)", DIM)
        steps = maps.passes[pass_index]
        for s, step in enumerate(sorted(steps)):
            cell: Optional[PartMaps] = steps[step].get(part)
            if cell is None:
                continue
            x = LABEL_W + s * cell_w
            tokens, tgroups = (face_tokens, face_groups) if token is None else ([token], [[token]])
            captions = []
            for k, values in enumerate((cell.before, cell.after)):
                img, lo, hi = _panel(image, values.float().numpy(), tokens, tgroups, pw, ph)
                canvas.paste(img, (x + k * groups * pw, y))
                captions.append(f"{lo:.3g}-{hi:.3g}")
            draw.line([(x + groups * pw, y), (x + groups * pw, y + ph - 1)], fill=TEXT, width=1)
            if token is None:   # several faces (Portrait): a fainter line between their mosaics
                for k in range(2):
                    for g in range(1, groups):
                        gx = x + k * groups * pw + g * pw
                        draw.line([(gx, y), (gx, y + ph - 1)], fill=DIM, width=1)
            first, second = cell_caption(step, part, cell, captions)
            _text(draw, (x, y + ph + 2), first[: max(8, cell_w // 6)], DIM)
            _text(draw, (x, y + ph + 14), second, DIM)
        y += ph + CAPTION_H
    return canvas
