"""Sliding-window tiling: where the tiles of a large image start, which pixels each one owns,
and how overlapping tiles' maps are blended (:func:`blend_window`, :class:`TileBlender`).

NumPy only (no TensorFlow), so the LiteRT / ONNX runners use it as well as the TensorFlow
tiled inference. Tiles of ``tile`` pixels step by ``tile - overlap``; the last tile is moved
back to end exactly at the image border (so every tile lies inside the image and has the
model's fixed input size). An image no larger than the tile is one tile at 0.

Example::

    tile_starts(1000, 512, 128)   # [0, 384, 488]
    tile_grid((1000, 1200), (512, 512), 128)   # [(0, 0), (0, 384), ..., (488, 688)]
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np


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


class TileBlender:
    """Blends per-tile maps of an image of ``size`` = (H, W) into one (H, W, C) float32 buffer.

    ``positions()``: the tiles' (top, left) (:func:`tile_grid`); ``tile_shape``: (h, w) of every
    tile, ``tile`` clipped to the image. ``add(top, left, values)`` with ``values`` (h, w, C)
    (or (h, w) when C is 1) adds ``values * window`` to the buffer and the window to the
    per-pixel weight sum (H, W); ``result()`` divides by that sum in place and returns the
    (H, W, C) buffer: the weighted mean of every tile's values at each pixel. Memory: the
    buffer and the weight sum, (C + 1) x H x W x 4 bytes, whatever the number of tiles.
    """

    def __init__(self, size: Sequence[int], channels: int, tile: Sequence[int], overlap: int,
                 window: str = "linear"):
        height, width = int(size[0]), int(size[1])
        if height < 1 or width < 1:
            raise ValueError(f"image size must be positive, got {height}x{width}")
        self.size = (height, width)
        self.tile = (int(tile[0]), int(tile[1]))
        self.overlap = int(overlap)
        self._positions = tile_grid(self.size, self.tile, self.overlap)  # validates tile and overlap
        self.tile_shape = (min(self.tile[0], height), min(self.tile[1], width))
        self.window = blend_window(*self.tile_shape, self.overlap, window)
        self.total = np.zeros((height, width, int(channels)), np.float32)
        self.weight_sum = np.zeros((height, width), np.float32)
        self._normalised = False

    def positions(self) -> List[Tuple[int, int]]:
        return list(self._positions)

    def add(self, top: int, left: int, values: np.ndarray) -> None:
        if self._normalised:
            raise ValueError("result() was already taken; start a new TileBlender")
        h, w = self.tile_shape
        values = np.asarray(values, np.float32)
        if values.ndim == 2:
            values = values[..., None]
        if values.shape != (h, w, self.total.shape[-1]):
            raise ValueError(f"tile values of shape {values.shape}, expected {(h, w, self.total.shape[-1])}")
        self.total[top:top + h, left:left + w] += values * self.window[..., None]
        self.weight_sum[top:top + h, left:left + w] += self.window

    def result(self) -> np.ndarray:
        if self._normalised:
            return self.total
        if not (self.weight_sum > 0).all():
            raise ValueError("some pixels are covered by no tile (add every tile of positions() first)")
        self.total /= self.weight_sum[..., None]
        self._normalised = True
        return self.total
