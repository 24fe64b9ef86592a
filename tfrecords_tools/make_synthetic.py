"""gscnn-synthetic: write a small procedural dataset in the exact Cityscapes layout.

    gscnn-synthetic OUT_ROOT --num-train 20 --num-val 6 --height 256 --width 512 --seed 0
    python -m tfrecords_tools.make_synthetic /tmp/cs --num-train 8 --height 64 --width 128
"""
from __future__ import annotations

import argparse
import logging
import sys

from gscnn_tf.cli.common import add_common_flags, configure_logging

log = logging.getLogger("gscnn-synthetic")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gscnn-synthetic",
        description="Generate procedural street scenes in Cityscapes layout (leftImg8bit/, gtFine/ with "
        "labelIds, instanceIds and color PNGs). Same arguments give byte-identical files.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("root", help="output Cityscapes root (created if missing; existing files are overwritten)")
    p.add_argument("--num-train", type=int, default=20, help="number of train images")
    p.add_argument("--num-val", type=int, default=6, help="number of val images")
    p.add_argument("--num-test", type=int, default=0, help="number of test images (label files hold only 0)")
    p.add_argument("--height", type=int, default=256, help="image height in pixels (>= 32)")
    p.add_argument("--width", type=int, default=512, help="image width in pixels (>= 32)")
    p.add_argument("--seed", type=int, default=0, help="random seed; each image depends only on (seed, split, index)")
    add_common_flags(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args, tensorflow=False)  # no TensorFlow here
    from gscnn_tf.data.synthetic import generate_synthetic_cityscapes

    try:
        out = generate_synthetic_cityscapes(
            args.root, num_train=args.num_train, num_val=args.num_val, num_test=args.num_test,
            height=args.height, width=args.width, seed=args.seed,
            progress=not args.quiet and sys.stderr.isatty())
    except ValueError as e:
        print(f"gscnn-synthetic: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"gscnn-synthetic: error: {e.filename or args.root}: {e.strerror}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("gscnn-synthetic: interrupted (files written so far are complete)", file=sys.stderr)
        return 130
    log.info("wrote %s under %s", ", ".join(f"{len(v)} {k}" for k, v in out.items()), args.root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
