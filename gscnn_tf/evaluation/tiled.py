"""Tiled (sliding-window) inference with bounded memory, for images larger than the network's input budget.

:class:`TiledPredictor` has :class:`gscnn_tf.evaluation.inference.MultiScalePredictor`'s
interface (``labels(image, out_size)``, ``scales``, ``flip``) and the same multi-scale + flip
protocol, but the network sees one tile at a time:

* for every scale ``s`` the image is resized to the stride-aligned size ``(Hs, Ws)`` of
  :func:`~gscnn_tf.evaluation.inference.stride_aligned_size` (as without tiles) and cut into
  tiles of ``tile_size`` (clipped to the scaled image) that step by ``tile_size - overlap``
  (:func:`gscnn_tf.deploy.tiles.tile_grid`: the last tile ends at the border);
* each tile's ``seg_logits`` become softmax probabilities; with ``flip`` the flipped tile is
  run as well and its probabilities, flipped back, averaged with the tile's (flip per tile);
* the tiles' probabilities are blended in their overlaps by
  :func:`gscnn_tf.deploy.tiles.blend_tiles`: a weighted sum with the ``"linear"`` window of
  :func:`~gscnn_tf.deploy.tiles.blend_window` (1 in the tile centre, falling linearly to the
  border over the overlap, so each pixel comes mostly from the tile that saw most context
  around it), divided by the summed weights;
* the (Hs, Ws, K) map is resized bilinearly to (H, W) and averaged over the scales; the
  prediction is the arg-max. (The whole-image predictor resizes the logits before the softmax,
  this one the blended probabilities after it: at scales other than 1 the two differ slightly.)

Memory: one (Hs, Ws, K) float32 buffer per scale (plus its resize to (H, W) and the running
sum when there are several scales) and one tile's activations; it grows with the image's
pixels, never with the number of tiles held at once (only one tile's logits exist at a time).
An image no larger than a tile is one tile, the same computation as without tiling.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from gscnn_tf.deploy.tiles import BLEND_WINDOWS, blend_tiles
from gscnn_tf.evaluation.inference import _seg_logits, stride_aligned_size

TILE_MULTIPLE = 8  # tile sides: multiples of the model's stride-8 input granularity


class TiledPredictor:
    """Sliding-window multi-scale + flip inference; see the module docstring.

    ``model``: RGB 0..255 (1, h, w, 3) -> ``seg_logits`` (1, h, w, K) (a dict, a list whose
    first element it is, or the tensor). ``tile_size``: (th, tw), multiples of 8;
    ``overlap``: pixels shared by neighbouring tiles, in [0, min(th, tw)). ``window``:
    ``"linear"`` or ``"uniform"`` (:func:`gscnn_tf.deploy.tiles.blend_window`).

    ``probability_map(image)``: (1, H, W, 3) -> (H, W, K) float32 NumPy mean softmax;
    ``labels(image, out_size)`` -> (h, w) int32 NumPy arg-max after resizing the probabilities
    to ``out_size`` (default the input size). One ``tf.function`` trace per tile shape.
    """

    def __init__(self, model, tile_size: Sequence[int], overlap: int = 0, scales: Sequence[float] = (1.0,),
                 flip: bool = False, window: str = "linear"):
        if not scales or min(scales) <= 0:
            raise ValueError(f"evaluation scales must be a non-empty list of positive numbers, got {list(scales)}")
        if len(tile_size) != 2 or min(tile_size) < 1 or any(v % TILE_MULTIPLE for v in tile_size):
            raise ValueError(f"tile size must be [height, width], positive multiples of {TILE_MULTIPLE}, "
                             f"got {list(tile_size)}")
        if not 0 <= overlap < min(tile_size):
            raise ValueError(f"tile overlap must be in [0, {min(tile_size)}) for tiles of {list(tile_size)}, "
                             f"got {overlap}")
        if window not in BLEND_WINDOWS:
            raise ValueError(f"blend window {window!r}: expected one of {BLEND_WINDOWS}")
        self.model = model
        self.tile_size = (int(tile_size[0]), int(tile_size[1]))
        self.overlap = int(overlap)
        self.scales = [float(s) for s in scales]
        self.flip = bool(flip)
        self.window = window
        self.tiles_run = 0  # network calls on tiles so far (flipped tiles not counted twice)
        self._tile_fn = tf.function(self._tile_probabilities)

    def _tile_probabilities(self, tile):
        """(1, h, w, 3) -> (h, w, K) softmax, averaged with the flipped tile's when ``flip``."""
        probs = tf.nn.softmax(tf.cast(_seg_logits(self.model(tile, training=False)), tf.float32), axis=-1)
        if self.flip:
            flipped = _seg_logits(self.model(tf.reverse(tile, axis=[2]), training=False))
            probs = 0.5 * (probs + tf.reverse(tf.nn.softmax(tf.cast(flipped, tf.float32), axis=-1), axis=[2]))
        return probs[0]

    def _scale_map(self, image, size) -> np.ndarray:
        """(Hs, Ws, K) blended probabilities of ``image`` resized to ``size``."""
        height, width = int(image.shape[1]), int(image.shape[2])
        x = image if tuple(size) == (height, width) else tf.image.resize(image, size, method="bilinear")
        th, tw = min(self.tile_size[0], size[0]), min(self.tile_size[1], size[1])
        out = []

        def run_tile(top, left):
            self.tiles_run += 1
            return self._tile_fn(x[:, top:top + th, left:left + tw, :]).numpy()

        def finish(begin, end, blended):
            if not out:  # K is known from the first band
                out.append(np.empty((size[0], size[1], blended.shape[-1]), np.float32))
            out[0][begin:end] = blended

        blend_tiles(size, self.tile_size, self.overlap, run_tile, finish, self.window)
        return out[0]

    def probability_map(self, image) -> np.ndarray:
        image = tf.convert_to_tensor(image, tf.float32)
        if image.shape.rank != 4 or image.shape[0] != 1:
            raise ValueError(f"expected one image (1, H, W, 3), got {tuple(image.shape)}")
        height, width = int(image.shape[1]), int(image.shape[2])
        total = None
        for scale in self.scales:
            size = stride_aligned_size(height, width, scale)
            probs = self._scale_map(image, size)
            if size != (height, width):
                probs = tf.image.resize(probs[None], (height, width), method="bilinear").numpy()[0]
            if total is None:
                total = probs
            else:
                total += probs
                del probs
        if len(self.scales) > 1:
            total /= float(len(self.scales))
        return total

    def labels(self, image, out_size: Optional[Sequence[int]] = None) -> np.ndarray:
        probs = self.probability_map(image)
        if out_size is not None and tuple(int(v) for v in out_size) != probs.shape[:2]:
            probs = tf.image.resize(probs[None], [int(out_size[0]), int(out_size[1])], method="bilinear").numpy()[0]
        return np.argmax(probs, axis=-1).astype(np.int32)


def make_predictor(model, eval_config):
    """The evaluation's predictor for ``eval_config`` (:class:`gscnn_tf.config.EvalConfig`):
    :class:`TiledPredictor` when ``tile_size`` is set, else the whole-image
    :class:`~gscnn_tf.evaluation.inference.MultiScalePredictor`."""
    from gscnn_tf.evaluation.inference import MultiScalePredictor

    if eval_config.tile_size:
        return TiledPredictor(model, eval_config.tile_size, eval_config.tile_overlap, eval_config.scales,
                              eval_config.flip)
    return MultiScalePredictor(model, eval_config.scales, eval_config.flip)
