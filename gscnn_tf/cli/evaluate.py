"""``evaluate.py``: the paper's metrics for a trained model (mIoU, boundary F, distance-based mIoU)."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from gscnn_tf.cli.common import add_common_flags, configure_logging, fail, progress_enabled, tile_size_arg
from gscnn_tf.deploy.tiles import DEFAULT_TILE_OVERLAP
from gscnn_tf.utils.quiet_tensorflow import import_tensorflow_quietly

logger = logging.getLogger("gscnn_tf.evaluate")

EXAMPLES = """
examples:
  # best checkpoint of a run, on its configured validation data, single scale
  python evaluate.py --checkpoint runs/demo
  # the released official model's protocol: scale 1.0, no flip, no distance-based IoU (1 inference per image)
  python evaluate.py --checkpoint runs/gscnn_wrn38_official --protocol official
  # multi-scale + flip, Cityscapes official evaluation as a cross-check
  python evaluate.py --checkpoint runs/r101/checkpoints/best.weights.h5 --scales 0.75 1.0 1.25 --flip --official-eval
  # large images in 512x1024 tiles (one at a time, blended over 128 pixels): bounded memory
  python evaluate.py --checkpoint runs/demo --tile-size 512x1024 --tile-overlap 128
  # another data location, 20 images, results in a chosen folder
  python evaluate.py --checkpoint runs/demo --set data.val_pattern='data/tfrecords/val_fine-*.tfrecord' \\
      --max-images 20 --out /tmp/eval_demo

cost: the default (--protocol paper) runs the network len(scales) x (2 with --flip) times per
image, and the distance-based IoU (--distance-mode resize) runs that again for every crop
fraction < 1: with the default fractions 1.0 0.75 0.5 0.25, 4 inferences per image at one
scale without flip. The start line and metrics.json (inferences_per_image) give the count.

outputs (in --out): metrics.json (everything, incl. the confusion matrix), metrics.md
(summary and per-class tables; also printed), and with --save-predictions/--official-eval
predictions/*_labelIds.png (the dataset's source label ids; Cityscapes' label ids by default).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="evaluate.py",
        description="Evaluate a trained Gated-SCNN model: confusion-matrix metrics (mIoU, category mIoU, "
        "pixel accuracy), boundary F-score at the configured tolerances, distance-based (vanishing-point "
        "crop) mIoU, optionally Cityscapes' official script.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True,
                   help="run directory (best, else last weights, else model.keras), a .weights.h5 or a .keras file")
    p.add_argument("--config", help="experiment YAML; default: the run's config.yaml next to the checkpoint")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set data.eval_scale=0.5 (repeatable; value parsed as YAML)")
    p.add_argument("--split", default="val", choices=["val", "train", "test"],
                   help="which data to evaluate: data.val_pattern, data.train_pattern or data.test_pattern "
                        "(or the TFDS split of that name); evaluate test once, on the final model")
    p.add_argument("--scales", type=float, nargs="+",
                   help="inference scales, probabilities averaged (eval.scales; default from config, normally 1.0)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="also average the horizontally flipped image's prediction (eval.flip)")
    p.add_argument("--tile-size", type=tile_size_arg, metavar="HxW",
                   help="sliding-window inference: run the network on tiles of H x W pixels (multiples of 8), one "
                   "at a time, and blend their softmax in the overlaps, so memory follows the tile, not the image "
                   "(eval.tile_size; default: the whole image at once). Combines with --scales and --flip (each "
                   "scaled image is tiled; flip per tile)")
    p.add_argument("--tile-overlap", type=int, metavar="N",
                   help="pixels shared by neighbouring tiles, blended with a window that is highest in the tile "
                   f"centre (eval.tile_overlap, default {DEFAULT_TILE_OVERLAP}; 0 <= N < both tile sides)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="paper",
                   help="paper (default): the config's scales and flip plus the distance-based IoU, which re-infers "
                   "each crop fraction < 1 (4 network inferences per image with the default fractions, one scale, "
                   "no flip); official: the official code's evaluation of its released model, scale 1.0, no flip, "
                   "no distance-based IoU, 1 inference per image. --scales, --flip and --distance-mode override "
                   "either")
    p.add_argument("--distance-mode", choices=["resize", "crop", "off"], default=None,
                   help="distance-based evaluation: resize = crop, upsample to full size and re-infer (paper; one "
                   "extra inference per crop fraction < 1, so 4 per image with the default fractions); crop = crop "
                   "the full-image prediction (no extra inference); off (default: resize, off with --protocol "
                   "official)")
    p.add_argument("--vanishing-point", type=float, nargs=2, metavar=("X", "Y"),
                   help="crop centre for the distance-based evaluation, as fractions of width and height "
                   "(default 0.5 0.45)")
    p.add_argument("--official-eval", action=argparse.BooleanOptionalAction, default=None,
                   help="also write label-id PNGs and run cityscapesscripts' evaluateImgLists (eval.official_eval)")
    p.add_argument("--save-predictions", action="store_true",
                   help="write the predictions as PNGs of the dataset's source label ids (dataset.label_map "
                        "inverted; Cityscapes: label ids) to OUT/predictions")
    p.add_argument("--out", help="output directory (default: RUN_DIR/eval_SPLIT)")
    p.add_argument("--max-images", type=int, help="evaluate only the first N images")
    p.add_argument("--boundary-workers", type=int, default=2,
                   help="CPU threads computing the boundary F-score while the model infers (default 2)")
    add_common_flags(p)
    return p


PROTOCOLS = ("paper", "official")


def inferences_per_image(scales, flip: bool, distance_mode: str, crop_fractions) -> int:
    """Network inferences per image: one per scale (two with flip) for the full image, and as
    many again for each distance crop fraction < 1 in ``resize`` mode (the crop is re-inferred)."""
    per_prediction = len(scales) * (2 if flip else 1)
    recropped = sum(1 for f in crop_fractions if f < 1.0) if distance_mode == "resize" else 0
    return per_prediction * (1 + recropped)


def _default_out(checkpoint: str, split: str) -> str:
    base = checkpoint if os.path.isdir(checkpoint) else os.path.dirname(os.path.abspath(checkpoint))
    if os.path.basename(base) == "checkpoints":
        base = os.path.dirname(base)
    return os.path.join(base, f"eval_{split}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args, tensorflow=False)  # TensorFlow after the fast checks below
    if args.max_images is not None and args.max_images <= 0:
        return fail(f"--max-images must be positive, got {args.max_images}")
    if args.boundary_workers <= 0:
        return fail(f"--boundary-workers must be positive, got {args.boundary_workers}")
    if args.scales is not None and any(s <= 0 for s in args.scales):
        return fail(f"--scales must be positive, got {args.scales}")
    if args.tile_size is not None and any(v % 8 for v in args.tile_size):
        return fail(f"--tile-size must be multiples of 8, got {args.tile_size[0]}x{args.tile_size[1]}")
    if args.tile_overlap is not None and args.tile_overlap < 0:
        return fail(f"--tile-overlap must be >= 0, got {args.tile_overlap}")
    if args.vanishing_point is not None and not all(0.0 <= v <= 1.0 for v in args.vanishing_point):
        return fail(f"--vanishing-point must be fractions in [0, 1], got {args.vanishing_point}")

    if not os.path.exists(args.checkpoint):  # before importing TensorFlow: fail fast
        return fail(f"{args.checkpoint}: checkpoint not found")
    if args.config and not os.path.isfile(args.config):
        return fail(f"{args.config}: config file not found")

    import_tensorflow_quietly(verbose=args.log_level == "DEBUG" and not args.quiet)
    from gscnn_tf.config import ConfigError, load_config
    from gscnn_tf.training.checkpoints import CheckpointError, find_run_config, load_inference_model, resolve_checkpoint

    try:
        resolve_checkpoint(args.checkpoint)
    except CheckpointError as exc:
        return fail(str(exc))
    config_path = args.config or find_run_config(args.checkpoint)
    try:
        cfg = load_config(config_path, args.overrides) if (config_path or args.overrides) else None
    except ConfigError as exc:
        return fail(str(exc))
    try:
        model, cfg = load_inference_model(args.checkpoint, cfg)
    except CheckpointError as exc:
        return fail(str(exc))

    eval_cfg = cfg.eval
    distance_mode = args.distance_mode
    if args.protocol == "official":
        eval_cfg = dataclasses.replace(eval_cfg, scales=[1.0], flip=False)
        distance_mode = distance_mode or "off"
    distance_mode = distance_mode or "resize"
    if args.scales is not None:
        eval_cfg = dataclasses.replace(eval_cfg, scales=list(args.scales))
    if args.flip is not None:
        eval_cfg = dataclasses.replace(eval_cfg, flip=args.flip)
    if args.official_eval is not None:
        eval_cfg = dataclasses.replace(eval_cfg, official_eval=args.official_eval)
    if args.tile_size is not None:
        eval_cfg = dataclasses.replace(eval_cfg, tile_size=list(args.tile_size))
    if args.tile_overlap is not None:
        eval_cfg = dataclasses.replace(eval_cfg, tile_overlap=args.tile_overlap)
    if eval_cfg.tile_size and not 0 <= eval_cfg.tile_overlap < min(eval_cfg.tile_size):
        return fail(f"tile overlap {eval_cfg.tile_overlap} must be smaller than both sides of the tile size "
                    f"{eval_cfg.tile_size[0]}x{eval_cfg.tile_size[1]} (--tile-overlap)")
    out_dir = args.out or _default_out(args.checkpoint, args.split)

    from gscnn_tf.data.pipeline import build_eval_dataset
    from gscnn_tf.evaluation.evaluate import evaluate
    from gscnn_tf.evaluation.report import markdown_report, write_report

    try:
        dataset = build_eval_dataset(cfg.data, with_filenames=True, split=args.split,
                                     ignore_label=cfg.dataset.ignore_label)
    except (ValueError, FileNotFoundError, OSError) as exc:
        return fail(f"{args.split} data: {exc}")
    per_image = inferences_per_image(eval_cfg.scales, eval_cfg.flip, distance_mode, eval_cfg.distance_crop_fractions)
    tiles = (f"tiles {eval_cfg.tile_size[0]}x{eval_cfg.tile_size[1]} overlap {eval_cfg.tile_overlap}"
             if eval_cfg.tile_size else "whole image")
    logger.info("evaluating %s on %s (%s protocol: scales %s, flip %s, %s, distance-based IoU %s; %d network "
                "inference%s per image%s) -> %s", args.checkpoint, args.split, args.protocol, eval_cfg.scales,
                eval_cfg.flip, tiles, distance_mode, per_image, "" if per_image == 1 else "s",
                " and tile" if eval_cfg.tile_size else "", out_dir)
    try:
        report = evaluate(
            model, dataset, eval_cfg, num_classes=cfg.model.num_classes,
            dataset_config=cfg.dataset, max_images=args.max_images,
            distance_mode=None if distance_mode == "off" else distance_mode,
            vanishing_point=args.vanishing_point, output_dir=out_dir,
            save_predictions=args.save_predictions, progress=progress_enabled(args),
            boundary_workers=args.boundary_workers,
        )
    except ValueError as exc:
        return fail(str(exc))
    report["checkpoint"] = os.path.abspath(args.checkpoint)
    report["split"] = args.split
    report["protocol"] = args.protocol
    report["inferences_per_image"] = per_image
    json_path, md_path = write_report(report, out_dir)
    print(markdown_report(report))
    logger.info("wrote %s and %s", json_path, md_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
