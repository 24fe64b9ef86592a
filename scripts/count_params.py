#!/usr/bin/env python
"""Prints a Markdown table of parameter counts: DeepLabV3+ baseline vs Gated-SCNN.

The baseline is ``GatedSCNN`` with ``shape_stream=False`` (same backbone, ASPP without the
shape branch, same decoder); Gated-SCNN adds the shape stream, the GCLs and the ASPP shape
branch. Counts are trainable parameters (BatchNorm moving statistics excluded). When wrn38 is
listed, a last line gives the official model's count (wrn38 with ``model.official_compat``,
the layout the official checkpoint imports into)::

    python scripts/count_params.py [--backbones resnet50 resnet101 mobilenetv2 wrn38] [--output-stride 8]
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402

from gscnn_tf.config import ModelConfig  # noqa: E402
from gscnn_tf.model import GatedSCNN  # noqa: E402


def trainable_params(config: ModelConfig, with_total: bool = False):
    model = GatedSCNN(config)
    count = sum(int(w.numpy().size) for w in model.trainable_weights)
    total = model.count_params()
    del model
    keras.backend.clear_session()
    return (count, total) if with_total else count


def table(backbones, output_stride, num_classes, alpha) -> str:
    rows = [
        f"Trainable parameters at output stride {output_stride}, {num_classes} classes "
        "(baseline = DeepLabV3+: same backbone, ASPP and decoder, no shape stream).",
        "",
        "| Backbone | DeepLabV3+ | Gated-SCNN | Added | Increase |",
        "|---|---:|---:|---:|---:|",
    ]
    for backbone in backbones:
        base = dict(backbone=backbone, output_stride=output_stride, num_classes=num_classes, mobilenet_alpha=alpha)
        without = trainable_params(ModelConfig(shape_stream=False, **base))
        with_shape = trainable_params(ModelConfig(shape_stream=True, **base))
        added = with_shape - without
        label = backbone if backbone != "mobilenetv2" else f"mobilenetv2 (alpha {alpha:g})"
        rows.append(f"| {label} | {without:,} | {with_shape:,} | {added:,} | {100.0 * added / without:.2f}% |")
    if "wrn38" in backbones:
        used, total = trainable_params(
            ModelConfig(backbone="wrn38", output_stride=8, num_classes=num_classes, official_compat=True), with_total=True
        )
        rows += ["", f"Official model (wrn38, model.official_compat=true): {used:,} trainable parameters "
                 f"(+{total - used:,} BatchNorm statistics)."]
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["resnet50", "resnet101", "mobilenetv2", "wrn38"],
                        help="backbones to count (wrn38 exists at output stride 8 only)")
    parser.add_argument("--output-stride", type=int, default=8, choices=(8, 16), help="backbone output stride")
    parser.add_argument("--num-classes", type=int, default=19, help="segmentation classes (default 19)")
    parser.add_argument("--mobilenet-alpha", type=float, default=1.0, help="MobileNetV2 width multiplier")
    args = parser.parse_args(argv)
    if args.output_stride != 8 and "wrn38" in args.backbones:
        parser.error("wrn38 is built at output stride 8 only; drop it from --backbones or use --output-stride 8")
    print(table(args.backbones, args.output_stride, args.num_classes, args.mobilenet_alpha))
    return 0


if __name__ == "__main__":
    sys.exit(main())
