"""Face-attention maps for the "Show face attention" preview: record, reduce on the fly, read out.

The hosts hand an `AttentionRecorder` callback to `fastface.method.attention.ip_attention(...,
recorder=...)` (or call it themselves with the untransformed map where FastFace leaves a layer to
the host), only while the option is on. The callback receives the face-branch attention
probabilities of one attn2 call

    attn_before, attn_after   (B, heads, L, T) fp32   (attn_after None: the layer is not transformed)

and keeps nothing of that size: the rows of the *full* branch (prompt + face: what the image is
made of) are averaged over heads, laid out on the layer's latent grid, resized to one common grid
and added to a running sum per (pass, step, UNet part, image). So memory is
O(steps × parts × tokens × grid pixels) per image and nothing is synchronised with the host.

Choices (documented in the README as well):
* **Spatial layout.** An attn2 layer of L tokens sits on the latent grid downsampled f = 1, 2, 4 …
  times; SD's stride-2 convolutions round up, so (H, W) = (⌈h/f⌉, ⌈w/f⌉) for the latent (h, w)
  of the call. A layer whose L matches no f is skipped (counted in `skipped`).
* **Common grid.** Layers of one part have different L (SD1.5 down: 64², 32², 16² at 512 px).
  Each layer's map is resized to one grid per pass — the latent size, halved until its longer side
  is ≤ `map_side` (64 by default) — bilinearly when upsampling, by area averaging when
  downsampling, and then averaged with equal weight per layer call. Coarse layers therefore look
  smooth, not blocky; a layer counts as much as any other, whatever its resolution.
* **Branch.** Only the rows the host names (the full branch of each image) are recorded; the
  uncond and id-only rows are generated with the same face but are not what the image shows.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Optional

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
# out of memory (torch.cuda's class before torch 2.5, the same class after): not the preview's to
# swallow, the host code turns FastFace off and redoes the step (views import nothing of FastFace,
# so not fastface.hosts.common.OUT_OF_MEMORY)
_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
log = logging.getLogger("fastface")
PARTS = ("down", "mid", "up")
DEFAULT_MAP_SIDE = 64


@lru_cache(maxsize=256)
def layer_grid(tokens: int, latent_h: int, latent_w: int) -> Optional[tuple[int, int]]:
    """(H, W) of an attention layer with `tokens` = H·W on a latent of (h, w), or None."""
    for level in range(8):
        f = 2 ** level
        h, w = -(-latent_h // f), -(-latent_w // f)
        if h * w == tokens:
            return h, w
        if h * w < tokens:
            break
    return None


@lru_cache(maxsize=64)
def common_grid(latent_h: int, latent_w: int, map_side: int = DEFAULT_MAP_SIDE) -> tuple[int, int]:
    """The grid every layer of a pass is resized to: the latent, halved until it fits `map_side`."""
    h, w = latent_h, latent_w
    while max(h, w) > map_side:
        h, w = -(-h // 2), -(-w // 2)
    return h, w


def to_grid(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """(n, T, H, W) → (n, T, *size): bilinear up, area average down (as documented above)."""
    if tuple(maps.shape[-2:]) == size:
        return maps
    if maps.shape[-2] >= size[0] and maps.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(maps, size)
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def describe_transform(transform) -> str:
    """A short label for a transform object (`fastface.method.transforms.ScalePower` / `Softmask`)."""
    if transform is None:
        return "no AM"
    name = type(transform).__name__
    if name == "ScalePower":
        return f"scale-power s={transform.s:g} p={transform.p:g}"
    if name == "Softmask":
        return f"softmask q={transform.quantile:g} d={transform.d:g} s={transform.s:g}"
    return name


@dataclass
class _Sum:
    """Running sums of one (pass, step, part, batch) cell."""

    before: Tensor                   # (n, T, H, W) fp32, on the device of the maps
    after: Tensor
    calls: int = 0                   # layer calls added
    transformed: int = 0             # of which had an `attn_after`
    label: str = "no AM"


@dataclass
class PartMaps:
    """The read-out maps of one (pass, step, part) for one image, on the CPU."""

    before: Tensor                   # (T, H, W) mean over heads and layers
    after: Tensor                    # (T, H, W); equals `before` where AM left the part alone
    layers: int                      # layer calls averaged
    transformed: bool
    label: str


@dataclass
class ImageMaps:
    """Every recorded map of one generated image: passes[pass][step][part] → PartMaps."""

    image: int
    passes: dict = field(default_factory=dict)
    pass_names: dict = field(default_factory=dict)
    tokens: int = 0


class AttentionRecorder:
    """Per job: reduces face-attention maps as they are computed (see the module docstring).

    The host calls `for_call(...)` once per attn2 call it wants recorded and passes the returned
    callable to `ip_attention(..., recorder=...)`. Only Python numbers are read from the tensors'
    shapes, so recording never waits for the device."""

    def __init__(self, map_side: int = DEFAULT_MAP_SIDE):
        self.map_side = int(map_side)
        self.sums: dict[tuple, _Sum] = {}
        self.pass_names: dict[int, str] = {}
        self.tokens: Optional[int] = None
        self.skipped = 0                 # layer calls whose L fit no latent level / other T
        self.error: Optional[str] = None # set when recording failed; nothing more is recorded

    def name_pass(self, index: int, name: str) -> None:
        self.pass_names[index] = name

    def for_call(self, *, pass_index: int, step: int, part: str, latent_hw: tuple[int, int],
                 rows: slice, first_image: int, transform=None) -> Callable[[Tensor, Optional[Tensor]], None]:
        """The recorder callback for one attn2 call: `rows` (of this call) are the full-branch rows
        of images first_image, first_image + 1, … in order."""
        label = describe_transform(transform)

        def record(before: Tensor, after: Optional[Tensor]) -> None:
            if self.error is not None:
                return
            try:
                self.add(before, after, pass_index=pass_index, step=step, part=part, latent_hw=latent_hw,
                         rows=rows, first_image=first_image, label=label)
            except _OUT_OF_MEMORY:
                raise
            except Exception as exc:  # a preview must never cost the image: stop recording, say why
                self.error = f"{type(exc).__name__}: {exc}"
                log.error("Show face attention: recording stopped (%s)", self.error)
        return record

    def add(self, before: Tensor, after: Optional[Tensor], *, pass_index: int, step: int, part: str,
            latent_hw: tuple[int, int], rows: slice, first_image: int, label: str = "no AM") -> None:
        """Add one attn2 call's maps (B, heads, L, T) to the running sums."""
        _, _, tokens, n_tokens = before.shape
        grid = layer_grid(int(tokens), int(latent_hw[0]), int(latent_hw[1]))
        if grid is None or (self.tokens is not None and n_tokens != self.tokens):
            self.skipped += 1
            return
        self.tokens = n_tokens
        size = common_grid(int(latent_hw[0]), int(latent_hw[1]), self.map_side)
        with torch.no_grad():
            maps = [self._reduce(before, rows, grid, size)]
            maps.append(maps[0] if after is None else self._reduce(after, rows, grid, size))
        key = (pass_index, step, part, first_image)
        cell = self.sums.get(key)
        if cell is None:
            cell = self.sums[key] = _Sum(torch.zeros_like(maps[0]), torch.zeros_like(maps[0]))
        elif cell.before.shape != maps[0].shape:  # a call with other rows for the same images
            self.skipped += 1
            return
        cell.before += maps[0]
        cell.after += maps[1]
        cell.calls += 1
        if after is not None:
            cell.transformed += 1
            cell.label = label

    @staticmethod
    def _reduce(attn: Tensor, rows: slice, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
        """(B, heads, L, T) → the chosen rows' head mean on the common grid, (n, T, *size) fp32."""
        picked = attn[rows].float().mean(dim=1)                     # (n, L, T)
        n, _, t = picked.shape
        spatial = picked.transpose(1, 2).reshape(n, t, grid[0], grid[1])
        return to_grid(spatial, size)

    # -- read-out (after sampling; the one place that copies to the CPU) -------------------------
    def images(self) -> list[ImageMaps]:
        """One `ImageMaps` per recorded image, sorted by image index."""
        out: dict[int, ImageMaps] = {}
        for (pass_index, step, part, first), cell in sorted(self.sums.items(), key=lambda kv: kv[0]):
            before = (cell.before / cell.calls).cpu()
            after = (cell.after / cell.calls).cpu()
            for i in range(before.shape[0]):
                maps = out.setdefault(first + i, ImageMaps(image=first + i, pass_names=dict(self.pass_names),
                                                           tokens=self.tokens or 0))
                maps.passes.setdefault(pass_index, {}).setdefault(step, {})[part] = PartMaps(
                    before=before[i], after=after[i], layers=cell.calls,
                    transformed=cell.transformed > 0, label=cell.label)
        return [out[k] for k in sorted(out)]


# -- which tokens mean what --------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenLayout:
    """How an adapter's face tokens are shown: `groups` are (title, token indices) drawn as one
    mosaic each; `separate` are tokens drawn in rows of their own (Plus-v2's background token)."""

    kind: str
    groups: tuple
    separate: tuple = ()


def token_layout(tokens: int, *, plus: bool = False, v2: Optional[bool] = None,
                 portrait: bool = False, pulid: bool = False, layout: str = "faceid") -> TokenLayout:
    """`layout` names the adapter's layout (the hosts' kind table says which): "faceid", "pulid",
    "instantid".

    FaceID / Plus v1: one mosaic of all tokens. Plus-v2 (or a Plus whose version the host cannot
    tell): token 0, the background token, separately and the others as the face mosaic. Portrait:
    16 tokens per face, one 4×4 mosaic per face. PuLID (`pulid`, or layout "pulid"): its 10 id
    tokens (the zero padding is not shown) as two groups, the 5 of the MLP over the face embedding
    and the 5 of the EVA-CLIP layers. InstantID: its 16 tokens (learnt queries of a Resampler over the
    face embedding, no background token) as one 4×4 face mosaic."""
    every = tuple(range(tokens))
    if layout == "instantid":
        return TokenLayout("InstantID", (("face", every),))
    if pulid or layout == "pulid":
        half = min(5, tokens)
        groups = (("id (MLP)", every[:half]),) + ((("id (EVA-CLIP layers)", every[half:]),) if tokens > half else ())
        return TokenLayout("PuLID", groups)
    if portrait and tokens >= 16 and tokens % 16 == 0:
        faces = tokens // 16
        groups = tuple((f"face {k + 1}" if faces > 1 else "face", tuple(range(16 * k, 16 * k + 16)))
                       for k in range(faces))
        return TokenLayout("FaceID-Portrait", groups)
    if plus and v2 is not False and tokens > 1:
        kind = "FaceID-Plus-v2" if v2 else "FaceID-Plus"
        return TokenLayout(kind, (("face", every[1:]),), separate=(0,))
    return TokenLayout("FaceID-Plus" if plus else "FaceID", (("face", every),))


def mosaic_shape(count: int) -> tuple[int, int]:
    """(rows, cols) of a near-square mosaic of `count` tiles."""
    cols = max(1, math.ceil(math.sqrt(count)))
    return max(1, math.ceil(count / cols)), cols
