"""``predict.py``: segment image files or folders with a SavedModel export, a checkpoint, or a
LiteRT (``.tflite``) / ONNX (``.onnx``) file from ``export_savedmodel.py --format``.

Per image ``<name>``: ``<name>_seg.png`` (the dataset's colours), ``<name>_overlay.png``,
``<name>_edges.png`` and with ``--label-ids`` ``<name>_labelIds.png``. Two inputs never
share outputs: names that would collide get ``_2``, ``_3``, ... (logged). Only regular
files up to ``--max-file-size`` are read (a FIFO or a device is reported, not read), and an
image whose header declares more than ``--max-pixels`` pixels is refused before decoding,
unless ``--tile-size`` is given: then every image larger than a tile is predicted tile by
tile (``--tile-overlap`` pixels blended), the class map and the edge map alike.

Exit status: 0 when every image was segmented; 1 when some files could not be read (each
is reported by name as a warning, the others are still processed; ``--fail-fast`` stops
at the first one instead); 2 for usage errors (missing model or input, bad flags).
"""
from __future__ import annotations

import argparse
import logging
import sys

from gscnn_tf.cli.common import add_common_flags, configure_logging, tile_size_arg
from gscnn_tf.deploy.tiles import DEFAULT_TILE_OVERLAP
from gscnn_tf.utils.serving_limits import DEFAULT_MAX_PIXELS

logger = logging.getLogger("gscnn_tf.prediction.files")


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number in [0, 1]") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be in [0, 1]")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="predict.py",
        description="Segment images with Gated-SCNN and write colour masks, overlays and edge maps.",
    )
    p.add_argument("--model", required=True,
                   help="a SavedModel (version directory, or export directory: its highest version), a "
                   "training checkpoint (run directory, .weights.h5 with config.yaml, or .keras), or a .tflite / .onnx "
                   "file from export_savedmodel.py --format litert|onnx (run by LiteRT / ONNX Runtime, no TensorFlow "
                   "in the model path; images of another size are padded or tiled)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help=".tflite / .onnx: the runtime's CPU threads (default: the runtime's choice)")
    p.add_argument("--input", required=True, nargs="+", metavar="IMG_OR_DIR",
                   help="image files and/or folders of images (.png .jpg .jpeg .bmp .gif .webp)")
    p.add_argument("--output", default="predictions",
                   help="output folder (created; default ./predictions); folder inputs keep their sub-folders; inputs "
                   "whose outputs would share a name get _2, _3, ... (logged), nothing is overwritten within a run")
    p.add_argument("--overlay-alpha", type=_alpha, default=0.5,
                   help="weight of the colour mask in <name>_overlay.png, 0 = photo only, 1 = mask only "
                   "(default 0.5)")
    p.add_argument("--label-ids", action="store_true",
                   help="also write <name>_labelIds.png in the dataset's own label values (for Cityscapes its label "
                   "ids, the official evaluation format)")
    p.add_argument("--recursive", action="store_true", help="also look for images in sub-folders of input folders")
    p.add_argument("--config", default=None,
                   help="experiment YAML for a weights checkpoint without config.yaml (ignored for SavedModels)")
    p.add_argument("--version", type=int, default=None,
                   help="SavedModel version to use from an export directory (default: the highest)")
    p.add_argument("--fail-fast", action="store_true",
                   help="stop at the first unreadable image (default: skip it, report it, exit 1 at the end)")
    p.add_argument("--max-file-size", type=int, default=64 * 2**20, metavar="BYTES",
                   help="skip (and report) input files larger than this; only regular files are read, so a FIFO or "
                   "a device never hangs the run (default 67108864 = 64 MiB; 0 = no limit)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help="refuse (skip and report) images whose header declares more than N pixels, before decoding "
                   f"them (default {DEFAULT_MAX_PIXELS} = 2048x2048, the serving default; 0 = no limit); with "
                   "--tile-size such images are predicted in tiles instead")
    p.add_argument("--tile-size", type=tile_size_arg, metavar="HxW",
                   help="predict images larger than H x W pixels tile by tile (the network sees one tile at a time), "
                   "blending the tiles' class probabilities and edge probabilities in their overlaps "
                   "(default: whole images). A SavedModel exported without --with-probabilities blends class votes")
    p.add_argument("--tile-overlap", type=int, default=DEFAULT_TILE_OVERLAP, metavar="N",
                   help="pixels shared by neighbouring tiles, blended with a weight highest in the tile centre "
                   f"(default {DEFAULT_TILE_OVERLAP}; 0 <= N < both tile sides)")
    add_common_flags(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_pixels < 0:
        print(f"predict: error: --max-pixels must be >= 0, got {args.max_pixels}", file=sys.stderr)
        return 2
    if args.tile_size and not 0 <= args.tile_overlap < min(args.tile_size):
        print(f"predict: error: --tile-overlap {args.tile_overlap} must be >= 0 and smaller than both sides of "
              f"--tile-size {args.tile_size[0]}x{args.tile_size[1]}", file=sys.stderr)
        return 2
    configure_logging(args)
    from gscnn_tf.config import ConfigError
    from gscnn_tf.deploy.runtime import DeployError
    from gscnn_tf.prediction.files import FILE_KINDS, ImageReadError, find_images, load_predictor, predict_files
    from gscnn_tf.training.checkpoints import CheckpointError

    try:
        items = find_images(args.input, recursive=args.recursive)
        if not items:
            raise FileNotFoundError(f"{', '.join(args.input)}: no images found")
        predictor = load_predictor(args.model, config_path=args.config, version=args.version,
                                   with_probabilities=args.tile_size is not None, num_threads=args.threads)
        if args.tile_size and predictor.kind in FILE_KINDS:
            logger.info("%s tiles images at its own input size; --tile-size is for checkpoints and SavedModels",
                        args.model)
            args.tile_size = None
        elif args.tile_size and not predictor.has_probabilities:
            logger.warning("%s has no probabilities output (export it with --with-probabilities): tiles are "
                           "blended as class votes", predictor.source)
        summary = predict_files(predictor, items, args.output, alpha=args.overlay_alpha, label_ids=args.label_ids,
                                fail_fast=args.fail_fast, progress=not args.quiet and sys.stderr.isatty(),
                                max_bytes=args.max_file_size, max_pixels=args.max_pixels,
                                tile_size=args.tile_size, tile_overlap=args.tile_overlap)
    except ImageReadError as exc:
        print(f"predict: error: {exc}", file=sys.stderr)
        return 1
    except (CheckpointError, ConfigError, DeployError, FileNotFoundError, OSError, ValueError) as exc:
        print(f"predict: error: {exc}", file=sys.stderr)
        return 2
    logger.info("wrote outputs for %d image(s) to %s", len(summary.written), args.output)
    if summary.failed:
        print(f"predict: {len(summary.failed)} of {len(items)} file(s) could not be read: "
              + "; ".join(path for path, _ in summary.failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
