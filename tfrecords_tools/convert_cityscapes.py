"""gscnn-convert: Cityscapes (folders or official zips) or a generic folder -> sharded TFRecords.

    gscnn-convert cityscapes --root /data/cityscapes --out /data/tfrecords --splits train val --workers 4
    gscnn-convert folder --images imgs/ --labels masks/ --label-map map.yaml --out out/ --split train
    gscnn-convert verify --out /data/tfrecords
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys

from gscnn_tf.cli.common import add_common_flags, configure_logging

log = logging.getLogger("gscnn-convert")
PROG = "gscnn-convert"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory for shards and manifests (created if missing)")
    p.add_argument("--num-shards", type=int, default=None,
                   help="shards per split (default: about 100 images per shard)")
    p.add_argument("--workers", type=int, default=1,
                   help="parallel writer processes (one shard each at a time); 1 = in this process")
    p.add_argument("--force", action="store_true",
                   help="rewrite every shard (default: keep shards whose sidecar checksum and inputs match)")
    add_common_flags(p)


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=fmt,
        description="Convert segmentation datasets to sharded TFRecords ({split}_fine-XXXXX-of-NNNNN.tfrecord, "
        "TF Model Garden keys; images keep their encoded bytes, labels are train-id PNGs) with a "
        "{split}_manifest.json, and verify them. Conversion is resumable: rerun after a failure.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("cityscapes", formatter_class=fmt, help="convert a Cityscapes root",
                       description="Convert a Cityscapes root: leftImg8bit/ + gtFine/ folders, or a folder "
                       "holding leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip (read in place). "
                       "Label ids are mapped to the 19 train ids (255 = ignore); ids outside Cityscapes' "
                       "table are an error. The test split is written without labels.")
    c.add_argument("--root", required=True, help="Cityscapes root directory")
    c.add_argument("--splits", nargs="+", default=["train", "val"], choices=["train", "val", "test"],
                   help="splits to convert")
    _common(c)

    f = sub.add_parser("folder", formatter_class=fmt, help="convert a folder of images + label PNGs",
                       description="Convert IMAGES/**/X.{png,jpg,jpeg} paired with LABELS/**/X{suffix}.png "
                       "using a JSON or YAML label map {raw value: train id} (255 = ignore).")
    f.add_argument("--images", required=True, help="directory of images (searched recursively)")
    f.add_argument("--labels", default=None, help="directory of single-channel 8-bit label PNGs "
                   "(omit for unlabeled images)")
    f.add_argument("--label-map", default=None,
                   help="JSON/YAML mapping raw label value -> train id, or a dataset description in the config's "
                   "dataset: form (name, class_names, class_colors, ignore_label, label_map; recorded in the "
                   "manifest) (required with --labels)")
    f.add_argument("--label-suffix", default="", help="label file name = image stem + this + '.png'")
    f.add_argument("--unmapped", choices=["error", "ignore"], default="error",
                   help="label values missing from the map: fail naming the file, or map them to the ignore label "
                   "(255 unless the map says otherwise)")
    f.add_argument("--split", default="train", help="split name used in shard and manifest names")
    _common(f)

    v = sub.add_parser("verify", formatter_class=fmt, help="decode and check every record against the manifests",
                       description="Check shard set, sizes, sha256 checksums, record counts, image sizes and "
                       "label values of every split (or --splits) in --out.")
    v.add_argument("--out", required=True, help="directory holding the shards and *_manifest.json")
    v.add_argument("--splits", nargs="+", default=None, help="splits to verify (default: every manifest found)")
    add_common_flags(v)
    return p


def _stop_on_sigterm(signum, frame):
    from gscnn_tf.data.cityscapes import ConversionStopped

    raise ConversionStopped("SIGTERM")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM (kill, systemd, a scheduler) stops like Ctrl-C instead of ending the process at once.
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        return _run(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(args) -> int:
    # Worker processes import TensorFlow themselves (quietly); the parent only when it writes.
    configure_logging(args, tensorflow=args.command == "verify" or args.workers <= 1)
    from gscnn_tf.data import convert, label_maps
    from gscnn_tf.data.cityscapes import ConversionError
    from gscnn_tf.data.verify import VerificationError, verify

    progress = not args.quiet and sys.stderr.isatty()
    try:
        if args.command == "verify":
            report = verify(args.out, args.splits, progress=progress)
            for split, r in report.items():
                log.info("%s: OK (%d records in %d shards)", split, r["num_examples"], r["num_shards"])
            print("verify: OK " + ", ".join(f"{s}={r['num_examples']}" for s, r in report.items()))
            return 0
        if args.workers < 1:
            raise ConversionError(f"--workers must be >= 1, got {args.workers}")
        if args.command == "cityscapes":
            manifests = convert.convert_cityscapes(args.root, args.out, splits=args.splits,
                                                   num_shards=args.num_shards, workers=args.workers,
                                                   progress=progress, force=args.force)
        else:
            if args.labels and not args.label_map:
                raise ConversionError("--label-map is required with --labels")
            mapping = (label_maps.load_label_map(args.label_map, args.unmapped) if args.label_map
                       else label_maps.cityscapes_mapping())
            manifests = {args.split: convert.convert_folder(
                args.images, args.labels, args.out, mapping, split=args.split, label_suffix=args.label_suffix,
                num_shards=args.num_shards, workers=args.workers, progress=progress, force=args.force)}
        for split, m in manifests.items():
            log.info("%s: %d images in %d shards", split, m["num_examples"], m["num_shards"])
        return 0
    except (ConversionError, VerificationError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"{PROG}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (ConversionStopped)
        name = getattr(e, "signal_name", "SIGINT")
        print(f"{PROG}: stopped by {name}: complete shards were kept and no partial file is left; "
              "rerun the same command to resume", file=sys.stderr)
        return 128 + int(getattr(signal, name))


if __name__ == "__main__":
    sys.exit(main())
