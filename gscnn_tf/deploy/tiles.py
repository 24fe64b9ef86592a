"""Sliding-window tiling: where the tiles of a large image start, and which pixels each one owns.

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
