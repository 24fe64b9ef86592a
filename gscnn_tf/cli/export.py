"""``export_savedmodel.py``: a training checkpoint -> versioned SavedModel for TF Serving, or a
LiteRT / ONNX file (``--format``) for phones, edge boxes and ONNX Runtime.

SavedModel (the default): writes ``<export-dir>/<version>/`` (version = next integer unless ``--version``) atomically:
a temporary directory next to it is renamed only once the SavedModel, its assets
(``assets/labels.json``, ``assets/config.yaml``) and the warmup requests
(``assets.extra/tf_serving_warmup_requests``) are written and, unless ``--no-verify``, the
reloaded SavedModel reproduced the in-memory model's class maps. See docs/SERVING.md.

``--format litert|onnx``: writes ``<export-dir>/gscnn_<H>x<W>_<quantization>.tflite|.onnx`` (or
``--output``) and its ``.json`` sidecar, for a fixed input size; published only after the file,
run in its own runtime, reproduced the Keras model's class maps. See docs/DEPLOYMENT.md.
"""
from __future__ import annotations

import argparse
import logging
import sys

from gscnn_tf.cli.common import add_common_flags, checkpoint_config, configure_logging, tile_size_arg
from gscnn_tf.deploy.tiles import DEFAULT_TILE_OVERLAP
from gscnn_tf.utils.serving_limits import DEFAULT_CHUNK_PIXELS, DEFAULT_MAX_PIXELS, DEFAULT_MAX_REQUEST_PIXELS

logger = logging.getLogger("gscnn_tf.export")



def _size(text: str) -> tuple:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HEIGHTxWIDTH, e.g. 512x1024") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: height and width must be positive")
    return h, w


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="export_savedmodel.py",
        description="Export a Gated-SCNN checkpoint as a versioned SavedModel that TF Serving loads as it is "
        "(signatures serving_default: encoded image bytes; serving_image_tensor: uint8 images).",
    )
    p.add_argument("--checkpoint", required=True,
                   help="training run directory (best, else last weights, else model.keras), a .weights.h5 file "
                   "(needs the run's config.yaml next to it or --config) or a .keras model")
    p.add_argument("--config", default=None,
                   help="experiment YAML for the model (default: the run's config.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value of --config, else of the run's config.yaml, e.g. "
                   "--set model.num_classes=19 (repeatable; value parsed as YAML)")
    p.add_argument("--export-dir", required=True,
                   help="model base directory: the version is written to EXPORT_DIR/VERSION (what TF Serving's "
                   "--model_base_path points at); LiteRT / ONNX files are written into it")
    p.add_argument("--format", choices=("saved_model", "litert", "onnx"), default="saved_model",
                   help="saved_model: a versioned SavedModel for TF Serving (default); litert: a .tflite file for "
                   "LiteRT (phones, edge boxes; builtin ops only); onnx: an .onnx file for ONNX Runtime")
    p.add_argument("--image-size", type=_size, default=None, metavar="HxW",
                   help="litert / onnx: the file's fixed input size (multiples of the model stride, e.g. 360x480); "
                   "the runner pads smaller images and tiles larger ones (required for these formats)")
    p.add_argument("--quantization", choices=("float32", "float16", "dynamic", "int8"), default="float32",
                   help="litert: float32; float16 (half-size weights); dynamic (int8 weights, float activations); "
                   "int8 (weights and activations, calibrated on --representative-shards). onnx: float32 only")
    p.add_argument("--representative-shards", default=None, metavar="GLOB",
                   help="litert / onnx: TFRecord shards (e.g. the training split) whose first images calibrate int8 "
                   "and serve as the self-check images (default: synthetic images for the self-check)")
    p.add_argument("--representative-images", type=int, default=32, metavar="N",
                   help="how many images to read from --representative-shards (default 32)")
    p.add_argument("--no-edge-output", action="store_true",
                   help="litert / onnx: output the class map only, not the edge map")
    p.add_argument("--output", default=None, metavar="FILE",
                   help="litert / onnx: the file to write (default: EXPORT_DIR/gscnn_<H>x<W>_<quantization>.tflite "
                   "or .onnx)")
    p.add_argument("--version", type=int, default=None,
                   help="version number (positive integer); default: one more than the highest existing version")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing version or file (default: refuse)")
    p.add_argument("--with-probabilities", action="store_true",
                   help="also output per-pixel softmax probabilities (B,H,W,K) float32 (large responses)")
    p.add_argument("--pad-mode", choices=("edge", "mean"), default="edge",
                   help="how images are padded to a multiple of the model stride before the network: 'edge' "
                   "repeats the border pixels, 'mean' pads with the normalisation mean colour (default: edge)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="reject (INVALID_ARGUMENT) images with more than this many pixels, protecting the server's "
                   "memory; PNG, JPEG, GIF and BMP sizes are read from the header before decoding; 0 = no limit "
                   f"(default {DEFAULT_MAX_PIXELS} = 2048x2048, twice a Cityscapes frame; memory per megapixel is "
                   "measured in docs/SERVING.md)")
    p.add_argument("--max-request-pixels", type=int, default=DEFAULT_MAX_REQUEST_PIXELS,
                   help="reject requests whose images hold more than this many pixels in total (a request holds all "
                   f"its decoded images and outputs at once); 0 = no limit (default {DEFAULT_MAX_REQUEST_PIXELS} = "
                   "8 Cityscapes frames)")
    p.add_argument("--chunk-pixels", type=int, default=DEFAULT_CHUNK_PIXELS,
                   help="the network runs on at most this many pixels per call (or one image if larger), one call "
                   "after the other, so a batch costs the memory of its largest chunk, not of all its images; "
                   f"0 = the whole batch at once (default {DEFAULT_CHUNK_PIXELS} = one Cityscapes frame)")
    p.add_argument("--tile-size", type=tile_size_arg, default=None, metavar="HxW",
                   help="saved_model: serve images above --max-pixels tile by tile instead of refusing them: the "
                   "network sees one H x W tile at a time (multiples of the model stride), the tiles' probabilities "
                   "are blended in their overlaps (default: no tiles; --max-request-pixels still applies)")
    p.add_argument("--tile-overlap", type=int, default=DEFAULT_TILE_OVERLAP, metavar="N",
                   help=f"saved_model with --tile-size: pixels neighbouring tiles share (default {DEFAULT_TILE_OVERLAP})")
    p.add_argument("--model-name", default="gscnn",
                   help="model name written into the warmup requests and labels.json (TF Serving --model_name)")
    p.add_argument("--warmup-images", nargs="+", default=None, metavar="IMAGE",
                   help="images for the TF Serving warmup requests (ideally at production size); "
                   "default: synthetic images of --warmup-size")
    p.add_argument("--warmup-size", type=_size, default=(256, 512), metavar="HxW",
                   help="size of the synthetic warmup images (default 256x512)")
    p.add_argument("--no-warmup", action="store_true", help="do not write assets.extra/tf_serving_warmup_requests")
    p.add_argument("--no-verify", action="store_true",
                   help="skip reloading the written SavedModel and comparing it with the in-memory model")
    add_common_flags(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args)
    from gscnn_tf.config import ConfigError
    from gscnn_tf.deploy.runtime import DeployError
    from gscnn_tf.export.saved_model import ExportError, export_saved_model
    from gscnn_tf.training.checkpoints import CheckpointError, load_inference_model

    try:
        for flag in ("max_pixels", "max_request_pixels", "chunk_pixels"):
            if getattr(args, flag) < 0:
                raise ExportError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be >= 0 (0 = no limit)")
        # --set applies on top of --config, else of the run's config.yaml (not of the package defaults).
        config = checkpoint_config(args.checkpoint, args.config, args.overrides)
        if args.version is not None and args.version < 1:
            raise ExportError(f"--version {args.version}: TF Serving needs a positive integer")
        model, config = load_inference_model(args.checkpoint, config)
        if args.format != "saved_model":
            return _export_file(args, model, config)
        path = export_saved_model(
            model,
            config,
            args.export_dir,
            version=args.version,
            overwrite=args.overwrite,
            with_probabilities=args.with_probabilities,
            pad_mode=args.pad_mode,
            max_pixels=args.max_pixels,
            max_request_pixels=args.max_request_pixels,
            chunk_pixels=args.chunk_pixels,
            tile_size=args.tile_size,
            tile_overlap=args.tile_overlap,
            warmup=not args.no_warmup,
            warmup_images=args.warmup_images,
            warmup_size=args.warmup_size,
            model_name=args.model_name,
            verify=not args.no_verify,
            source=args.checkpoint,
        )
    except (CheckpointError, ConfigError, DeployError, ExportError, FileExistsError, FileNotFoundError, OSError,
            ValueError) as exc:
        print(f"export_savedmodel: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


def _export_file(args, model, config) -> int:
    """--format litert | onnx (errors propagate to main's handler)."""
    import os

    from gscnn_tf.export.file_export import default_file_name, export_model_file, representative_images
    from gscnn_tf.export.saved_model import ExportError

    if args.image_size is None:
        raise ExportError(f"--format {args.format} needs --image-size HxW (the file's fixed input size)")
    if args.representative_images < 1:
        raise ExportError(f"--representative-images {args.representative_images}: must be >= 1")
    path = args.output or os.path.join(args.export_dir, default_file_name(args.format, args.image_size,
                                                                          args.quantization))
    representative = (representative_images(args.representative_shards, args.representative_images, args.image_size)
                      if args.representative_shards else None)
    metadata = export_model_file(model, config, path, args.format, args.image_size, args.quantization,
                                 representative=representative, with_edges=not args.no_edge_output,
                                 overwrite=args.overwrite, source=args.checkpoint)
    check = metadata["self_check"]
    logger.info("wrote %s (%d bytes); class maps agree with the Keras model on %.3f %% of pixels", path,
                metadata["file_bytes"], 100 * check["class_agreement"])
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
