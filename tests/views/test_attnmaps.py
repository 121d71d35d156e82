"""Face-attention recording (fastface.views.attnmaps) and the preview grid (fastface.views.attnpreview)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from PIL import Image

from fastface.method.transforms import ScalePower, Softmask
from fastface.views.attnmaps import (AttentionRecorder, common_grid, describe_transform, layer_grid,
                               mosaic_shape, token_layout)
from fastface.views.attnpreview import (CAPTION_H, CELL_GAP, HEADER_H, LABEL_W, MARGIN, PASS_H, TITLE_H,
                                  panel_size, preview_size, render_grid)


def softmaxed(*shape, seed=0, scale=3.0):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).softmax(-1)


# -- geometry ---------------------------------------------------------------------------------------
@given(st.integers(2, 200), st.integers(2, 200), st.integers(0, 4))
def test_layer_grid_inverts_the_unet_downsampling(h, w, level):
    f = 2 ** level
    hh, ww = math.ceil(h / f), math.ceil(w / f)   # stride-2 convolutions with padding round up
    assert layer_grid(hh * ww, h, w) == (hh, ww)


def test_layer_grid_rejects_a_length_of_no_level():
    assert layer_grid(7, 16, 16) is None


@pytest.mark.parametrize("latent, side, grid", [((64, 64), 64, (64, 64)), ((128, 128), 64, (64, 64)),
                                               ((128, 96), 64, (64, 48)), ((16, 12), 8, (8, 6)),
                                               ((8, 8), 64, (8, 8))])
def test_common_grid_is_the_latent_halved_to_fit(latent, side, grid):
    assert common_grid(*latent, side) == grid


# -- the reduction equals a direct computation ----------------------------------------------------------
def direct_part_map(calls, rows, size):
    """Straight from the definition: per call the rows' mean over heads, on the layer grid,
    resized to `size` (2×2 block mean when halving, F.interpolate bilinear when growing, as is),
    then averaged over the calls."""
    total = 0
    for attn, grid in calls:
        m = attn[rows].mean(dim=1)                                     # (n, L, T)
        m = m.permute(0, 2, 1).reshape(m.shape[0], m.shape[2], *grid)  # (n, T, H, W)
        if grid[0] > size[0]:
            n, t, h, w = m.shape
            m = m.reshape(n, t, size[0], h // size[0], size[1], w // size[1]).mean(dim=(3, 5))
        elif grid[0] < size[0]:
            m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
        total = total + m
    return total / len(calls)


def test_reduction_equals_a_direct_computation():
    latent, side = (16, 12), 8          # common grid (8, 6): one layer halved, one as is, one grown
    size = common_grid(*latent, side)
    rec = AttentionRecorder(map_side=side)
    heads, tokens, batch = 3, 4, 2
    rows = slice(0, batch)              # A1111 layout [cond images, uncond images]: the cond block
    transform = ScalePower(s=1.5, p=1.3)
    expected = {}
    seed = 0
    for step in range(3):
        for part, grids in (("down", [(16, 12), (8, 6)]), ("mid", [(4, 3)]), ("up", [(4, 3), (8, 6), (16, 12)])):
            calls_before, calls_after = [], []
            for grid in grids:
                seed += 1
                attn = softmaxed(2 * batch, heads, grid[0] * grid[1], tokens, seed=seed)
                after = None if part == "mid" else transform(attn)
                rec.for_call(pass_index=0, step=step, part=part, latent_hw=latent, rows=rows, first_image=4,
                             transform=None if after is None else transform)(attn, after)
                calls_before.append((attn, grid))
                calls_after.append((attn if after is None else after, grid))
            expected[(step, part)] = (direct_part_map(calls_before, rows, size),
                                      direct_part_map(calls_after, rows, size), len(grids))
    images = rec.images()
    assert [m.image for m in images] == [4, 5] and rec.skipped == 0
    for i, maps in enumerate(images):
        assert maps.tokens == tokens
        for (step, part), (before, after, layers) in expected.items():
            cell = maps.passes[0][step][part]
            assert cell.before.shape == (tokens, *size)
            torch.testing.assert_close(cell.before, before[i], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(cell.after, after[i], rtol=1e-5, atol=1e-6)
            assert cell.layers == layers
            assert cell.transformed == (part != "mid")
            assert cell.label == ("no AM" if part == "mid" else "scale-power s=1.5 p=1.3")


def test_only_the_named_rows_are_recorded():
    """Forge's rows are chunk-major: with cond_or_uncond [1, 0] the cond chunk is the second one."""
    rec = AttentionRecorder()
    attn = softmaxed(4, 2, 16, 4, seed=3)
    rec.add(attn, None, pass_index=0, step=0, part="down", latent_hw=(4, 4), rows=slice(2, 4), first_image=0)
    (a, b) = rec.images()
    torch.testing.assert_close(a.passes[0][0]["down"].before, attn[2].mean(0).T.reshape(4, 4, 4))
    torch.testing.assert_close(b.passes[0][0]["down"].before, attn[3].mean(0).T.reshape(4, 4, 4))


def test_memory_is_one_small_map_per_step_part_and_image():
    rec = AttentionRecorder(map_side=16)
    for step in range(4):
        for layer in range(10):   # many layers: still one running sum per (step, part)
            attn = softmaxed(6, 5, 64 * 64, 16, seed=layer)
            rec.add(attn, attn * 2, pass_index=0, step=step, part="up", latent_hw=(64, 64), rows=slice(0, 3),
                    first_image=0)
    assert len(rec.sums) == 4
    for cell in rec.sums.values():
        assert cell.before.shape == cell.after.shape == (3, 16, 16, 16) and cell.calls == 10


def test_a_layer_of_unknown_shape_or_other_tokens_is_skipped_not_fatal():
    rec = AttentionRecorder()
    rec.add(softmaxed(1, 1, 7, 4), None, pass_index=0, step=0, part="up", latent_hw=(4, 4), rows=slice(0, 1),
            first_image=0)
    rec.add(softmaxed(1, 1, 16, 4), None, pass_index=0, step=0, part="up", latent_hw=(4, 4), rows=slice(0, 1),
            first_image=0)
    rec.add(softmaxed(1, 1, 16, 16), None, pass_index=0, step=0, part="up", latent_hw=(4, 4), rows=slice(0, 1),
            first_image=0)
    assert rec.skipped == 2 and rec.sums[(0, 0, "up", 0)].calls == 1


def test_transform_labels():
    assert describe_transform(None) == "no AM"
    assert describe_transform(ScalePower(s=1.55, p=1.3)) == "scale-power s=1.55 p=1.3"
    assert describe_transform(Softmask(quantile=0.65, d=5.0, s=1.55)) == "softmask q=0.65 d=5 s=1.55"


# -- token layouts ----------------------------------------------------------------------------------------
def test_token_layouts_show_every_token_once():
    for layout, tokens in ((token_layout(4), 4), (token_layout(4, plus=True, v2=True), 4),
                           (token_layout(4, plus=True, v2=False), 4), (token_layout(16, portrait=True), 16),
                           (token_layout(48, portrait=True), 48), (token_layout(4, plus=True), 4)):
        shown = [t for _, group in layout.groups for t in group] + list(layout.separate)
        assert sorted(shown) == list(range(tokens)), layout
    assert token_layout(4, plus=True, v2=True).separate == (0,)          # the background token
    assert token_layout(4, plus=True, v2=False).separate == ()           # Plus v1: no background token
    assert [g for g, _ in token_layout(48, portrait=True).groups] == ["face 1", "face 2", "face 3"]
    assert mosaic_shape(16) == (4, 4) and mosaic_shape(3) == (2, 2) and mosaic_shape(1) == (1, 1)


# -- the grid image -------------------------------------------------------------------------------------
def recorded(steps=4, tokens=4, passes=1, latent=(8, 6), parts=("down", "mid", "up")):
    rec = AttentionRecorder()
    seed = 0
    for pass_index in range(passes):
        rec.name_pass(pass_index, ["base", "hires"][pass_index])
        for step in range(steps):
            for part in parts:
                seed += 1
                attn = softmaxed(2, 2, latent[0] * latent[1], tokens, seed=seed)
                transform = None if part == "mid" else ScalePower(1.55, 1.3)
                after = None if transform is None else transform(attn)
                rec.for_call(pass_index=pass_index, step=step, part=part, latent_hw=latent, rows=slice(0, 1),
                             first_image=0, transform=transform)(attn, after)
    return rec.images()[0]


def generated(size=(48, 64), seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


@pytest.mark.parametrize("kind", ["faceid", "plus-v2", "portrait-2"])
@pytest.mark.parametrize("passes", [1, 2])
def test_grid_size_is_the_documented_one(kind, passes):
    tokens = 32 if kind == "portrait-2" else 4
    layout = {"faceid": token_layout(4), "plus-v2": token_layout(4, plus=True, v2=True),
              "portrait-2": token_layout(32, portrait=True)}[kind]
    maps = recorded(steps=3, tokens=tokens, passes=passes)
    image = generated()
    out = render_grid(image, maps, layout, panel=100)
    pw, ph = panel_size(image.size, 100)
    assert (pw, ph) == (75, 100)
    groups = len(layout.groups)
    rows = 3 * passes * (2 if kind == "plus-v2" else 1)
    width = LABEL_W + 3 * (2 * groups * pw + CELL_GAP) + MARGIN
    height = TITLE_H + HEADER_H + rows * (ph + CAPTION_H) + (passes if passes > 1 else 0) * PASS_H + MARGIN
    assert out.size == preview_size(image.size, maps, layout, panel=100) == (width, height)
    assert out.mode == "RGB"


def test_grid_labels_name_step_part_transform_and_range():
    labels = []
    maps = recorded(steps=2)
    render_grid(generated(), maps, token_layout(4, plus=True, v2=True), labels=labels)
    texts = [t for _, _, t in labels]
    assert "step 1/2" in texts and "step 2/2" in texts and texts.count("before") == texts.count("after AM") == 2
    for part in ("down", "mid", "up"):
        assert part in texts and f"{part} token 0" in texts
    assert "s1 down: scale-power s=1.55 p=1.3" in texts and "s2 up: scale-power s=1.55 p=1.3" in texts
    assert "s1 mid: no AM (after = before)" in texts
    ranges = [t for t in texts if t.startswith("min-max ")]
    assert len(ranges) == 2 * 3 * 2   # steps × parts × (face rows + background rows)
    cell = maps.passes[0][0]["down"]
    face = cell.before[1:]   # Plus-v2: tokens 1..3 are the face panel
    assert f"min-max {float(face.min()):.3g}-{float(face.max()):.3g} |" in ranges[0]


def test_before_and_after_panels_differ_only_where_am_acted():
    maps = recorded(steps=1)
    image = generated()
    out = np.asarray(render_grid(image, maps, token_layout(4), panel=80))
    pw, ph = panel_size(image.size, 80)
    top = TITLE_H + HEADER_H

    def panels(row):
        y = top + row * (ph + CAPTION_H)
        before = out[y:y + ph, LABEL_W + 1:LABEL_W + pw]           # column 0 of `after` is the divider
        after = out[y:y + ph, LABEL_W + pw + 1:LABEL_W + 2 * pw]
        return before, after

    down_before, down_after = panels(0)
    mid_before, mid_after = panels(1)
    assert np.array_equal(mid_before, mid_after)        # no AM in the mid block: same picture
    assert not np.array_equal(down_before, down_after)  # scale-power reshaped the map


def test_an_error_while_recording_stops_recording_without_raising(monkeypatch):
    rec = AttentionRecorder()
    record = rec.for_call(pass_index=0, step=0, part="up", latent_hw=(4, 4), rows=slice(0, 1), first_image=0)
    record(softmaxed(1, 1, 16, 4), None)
    monkeypatch.setattr(rec, "add", lambda *a, **k: 1 / 0)
    record(softmaxed(1, 1, 16, 4), None)    # does not raise
    assert rec.error.startswith("ZeroDivisionError")
    monkeypatch.undo()
    record(softmaxed(1, 1, 16, 4), None)    # nothing more is recorded after an error
    assert rec.sums[(0, 0, "up", 0)].calls == 1
