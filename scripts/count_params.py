#!/usr/bin/env python
"""Prints a Markdown table of parameter counts: DeepLabV3+ baseline vs Gated-SCNN.

The baseline is ``build_gscnn`` with ``shape_stream=False`` (same backbone, ASPP without the
shape branch, same decoder); Gated-SCNN adds the shape stream, the GCLs and the ASPP shape
branch. Counts are trainable parameters (BatchNorm moving statistics excluded)::

    python scripts/count_params.py [--backbones resnet50 resnet101 mobilenetv2] [--output-stride 8]
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402

from gscnn_tf.config import ModelConfig  # noqa: E402
from gscnn_tf.model import build_gscnn  # noqa: E402


def trainable_params(config: ModelConfig) -> int:
    model = build_gscnn(config)
    count = sum(int(w.numpy().size) for w in model.trainable_weights)
    del model
    keras.backend.clear_session()
    return count


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
    return "\n".join(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["resnet50", "resnet101", "mobilenetv2"])
    parser.add_argument("--output-stride", type=int, default=8, choices=(8, 16))
    parser.add_argument("--num-classes", type=int, default=19)
    parser.add_argument("--mobilenet-alpha", type=float, default=1.0)
    args = parser.parse_args(argv)
    print(table(args.backbones, args.output_stride, args.num_classes, args.mobilenet_alpha))
    return 0


if __name__ == "__main__":
    sys.exit(main())
