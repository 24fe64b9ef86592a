"""Sliding-window tiling: where the tiles of a large image start, which pixels each one owns,
and how overlapping tiles' maps are blended (:func:`blend_window`, :func:`blend_tiles`).

NumPy only (no TensorFlow), so the LiteRT / ONNX runners use it as well as the TensorFlow
tiled inference. Tiles of ``tile`` pixels step by ``tile - overlap``; the last tile is moved
back to end exactly at the image border (so every tile lies inside the image and has the
model's fixed input size). An image no larger than the tile is one tile at 0.

Example::

    tile_starts(1000, 512, 128)   # [0, 384, 488]
    tile_grid((1000, 1200), (512, 512), 128)   # [(0, 0), (0, 384), ..., (488, 688)]
"""
from __future__ import annotations

from typing import Callable, List, Sequence, Tuple

import numpy as np

DEFAULT_TILE_OVERLAP = 64  # pixels neighbouring tiles share unless told otherwise (predict, evaluate, serving)


def tile_starts(length: int, tile: int, overlap: int) -> List[int]:
    """Start offsets along one axis of ``length`` pixels; see the module docstring."""
    if tile < 1:
        raise ValueError(f"tile size must be positive, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, tile size {tile}), got {overlap}")
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step)) + [length - tile]
    return sorted(set(starts))


def tile_grid(size: Sequence[int], tile: Sequence[int], overlap: int) -> List[Tuple[int, int]]:
    """(top, left) of every tile of an image of ``size`` = (H, W), rows first."""
    return [(top, left) for top in tile_starts(size[0], tile[0], overlap)
            for left in tile_starts(size[1], tile[1], overlap)]


def owned_ranges(length: int, tile: int, overlap: int) -> List[Tuple[int, int, int]]:
    """For each tile along one axis: (start, own_begin, own_end), the image range whose pixels
    this tile's output is used for when tiles are stitched without blending (class maps).

    Neighbouring tiles split their overlap in the middle, so each pixel comes from the tile in
    which it lies farthest from a border (where the network sees the least context).
    """
    starts = tile_starts(length, tile, overlap)
    out = []
    for i, start in enumerate(starts):
        begin = 0 if i == 0 else (start + min(starts[i - 1] + tile, length)) // 2
        end = length if i == len(starts) - 1 else (starts[i + 1] + min(start + tile, length)) // 2
        out.append((start, begin, end))
    return out


BLEND_WINDOWS = ("linear", "uniform")


def _window_1d(length: int, overlap: int) -> np.ndarray:
    i = np.arange(length, dtype=np.float64) + 0.5
    return np.minimum(1.0, np.minimum(i, length - i) / overlap)


def blend_window(height: int, width: int, overlap: int, window: str = "linear") -> np.ndarray:
    """(height, width) float32 weight of each pixel of one tile when overlapping tiles are blended.

    ``"linear"`` (the default): separable, ``w(y, x) = v(y) * v(x)`` with, along an axis of
    ``n`` pixels, ``v(i) = min(1, (i + 0.5) / overlap, (n - i - 0.5) / overlap)``: 1 in the
    tile's centre, falling linearly over the ``overlap`` pixels next to each border to
    ``0.5 / overlap`` at the border pixel. Two neighbouring tiles that overlap by exactly
    ``overlap`` pixels then cross-fade (their weights sum to 1 across the overlap), so each
    pixel is taken mostly from the tile in which the network saw the most context around it;
    every weight is > 0, so image-border pixels that only one tile covers still count.
    ``"uniform"`` (and any window with ``overlap`` 0): all ones, a plain mean in the overlaps.
    """
    if window not in BLEND_WINDOWS:
        raise ValueError(f"blend window {window!r}: expected one of {BLEND_WINDOWS}")
    if window == "uniform" or overlap <= 0:
        return np.ones((height, width), np.float32)
    return np.outer(_window_1d(height, overlap), _window_1d(width, overlap)).astype(np.float32)


def blend_tiles(size: Sequence[int], tile: Sequence[int], overlap: int, run_tile: Callable, finish: Callable,
                window: str = "linear") -> None:
    """Blends overlapping tiles' maps of an image of ``size`` = (H, W), streaming finished rows.

    ``run_tile(top, left)`` returns the (h, w, C) (or (h, w) for C = 1) float map of the tile at
    (top, left) of :func:`tile_grid`, (h, w) being ``tile`` clipped to the image. Each map is
    weighted by :func:`blend_window` (``window``) and summed; every pixel's result is the
    weighted mean of the maps of the tiles covering it. Tiles are run one row of tiles at a
    time; as soon as no later tile covers a band of image rows, ``finish(row_begin, row_end,
    blended)`` receives that band's (row_end - row_begin, W, C) float32 result, bands in order,
    together covering every row once.

    Memory: one row of tiles' sum, (h x W x (C + 1)) float32, whatever the image's height, so
    a caller that keeps only what it needs of each band (the arg-max, say) runs in memory that
    does not grow with the number of tile rows. (A buffer of the whole image would: (C + 1) x
    H x W x 4 bytes, 1.3 GB at 16 megapixels and 19 classes.)
    """
    height, width = int(size[0]), int(size[1])
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    rows = tile_starts(height, int(tile[0]), overlap)
    cols = tile_starts(width, int(tile[1]), overlap)
    th, tw = min(int(tile[0]), height), min(int(tile[1]), width)
    weights = blend_window(th, tw, overlap, window)
    band = band_weight = None  # the sums of image rows [rows[i], rows[i] + th)
    for i, top in enumerate(rows):
        if band is not None:  # keep the rows this row of tiles shares with the previous one
            shift = top - rows[i - 1]
            band[:th - shift] = band[shift:]
            band[th - shift:] = 0
            band_weight[:th - shift] = band_weight[shift:]
            band_weight[th - shift:] = 0
        for left in cols:
            values = np.asarray(run_tile(top, left), np.float32)
            if values.ndim == 2:
                values = values[..., None]
            if band is None:
                band = np.zeros((th, width, values.shape[-1]), np.float32)
                band_weight = np.zeros((th, width), np.float32)
            if values.shape != (th, tw, band.shape[-1]):
                raise ValueError(f"tile at ({top}, {left}): values of shape {values.shape}, "
                                 f"expected {(th, tw, band.shape[-1])}")
            band[:, left:left + tw] += values * weights[..., None]
            band_weight[:, left:left + tw] += weights
        end = rows[i + 1] if i + 1 < len(rows) else height
        done = end - top
        finish(top, end, band[:done] / band_weight[:done, :, None])  # window weights are > 0
