"""``train_keras.py``: train Gated-SCNN with model.fit on one device, many GPUs or many workers."""
from __future__ import annotations

import argparse
import json
import logging
import sys

from gscnn_tf.cli.common import add_common_flags, configure_logging, fail

EXAMPLES = """
examples:
  # the CPU demo on the synthetic dataset (see README)
  python train_keras.py --config configs/cpu_demo.yaml --model-dir runs/demo
  # the paper recipe on 8 GPUs
  python train_keras.py --config configs/cityscapes_resnet101_os8.yaml --strategy mirrored \\
      --set data.train_pattern='/data/cs_tfrecords/train_fine-*.tfrecord'
  # fine-tune the imported official model into a new run directory (the import's stays as it is)
  python train_keras.py --config configs/cityscapes_wrn38_official.yaml --init-from runs/gscnn_wrn38_official \
      --model-dir runs/gscnn_wrn38_finetune
  # two logical CPU devices (exercises MirroredStrategy + SyncBN without a GPU)
  python train_keras.py --config configs/cpu_demo.yaml --strategy mirrored --num-cpu-devices 2
  # one worker of a multi-machine job (the cluster comes from TF_CONFIG)
  TF_CONFIG='{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", "index": 0}}' \\
      python train_keras.py --config configs/cityscapes_resnet50_os8.yaml --strategy multi_worker
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_keras.py",
        description="Train Gated-SCNN (or the DeepLabV3+ baseline) with keras model.fit. "
        "A run directory that holds a backup is resumed at the exact step it stopped at. Progress goes to stdout: "
        "Keras' bar on a terminal, one line per epoch (epoch, seconds, metrics) when stdout is a file or a pipe. "
        "Exit status: 0 done, 2 the run could not start (bad flags, data or config change; nothing written), "
        "1 the run stopped (diverged, disk full, corrupt data; the last backup and checkpoints are intact).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="experiment YAML (see configs/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.batch_size=4 (repeatable; value parsed as YAML)")
    p.add_argument("--model-dir", help="run directory: config, checkpoints, backups, logs (train.model_dir)")
    p.add_argument("--strategy", choices=["default", "mirrored", "multi_worker"],
                   help="distribution strategy (train.strategy): one device, all local GPUs, or TF_CONFIG workers")
    p.add_argument("--num-cpu-devices", type=int,
                   help="with --strategy mirrored and no GPU: split the CPU into N logical devices (train.num_cpu_devices)")
    p.add_argument("--epochs", type=int, help="number of epochs (train.epochs)")
    p.add_argument("--batch-size", type=int, help="global batch size across all replicas (train.batch_size)")
    p.add_argument("--mixed-precision", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed_float16 compute with float32 logits and loss scaling (train.mixed_precision)")
    p.add_argument("--xla", choices=["auto", "on", "off"],
                   help="XLA compilation (train.jit_compile); forced off for multi-replica CPU runs, where it fails")
    p.add_argument("--seed", type=int, help="random seed for weights, augmentation and Gumbel noise (train.seed)")
    p.add_argument("--init-from", "--init-checkpoint", dest="init_checkpoint", metavar="RUN_OR_WEIGHTS",
                   help="fine-tune: initialise the new run's model with these weights (a run directory, e.g. the one "
                   "import_official_checkpoint.py wrote: its best, else last weights, else model.keras; or a "
                   ".weights.h5 / .keras file) before the first step (train.init_checkpoint). The source is only read "
                   "and must lie outside the run directory: give the new run its own --model-dir. Ignored, with a "
                   "log line, when the run directory already holds a backup (the run resumes from it)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="require a backup in the run directory and resume from it")
    group.add_argument("--fresh", action="store_true",
                       help="discard the run directory's earlier run (backup, checkpoints, model.keras, metrics CSV, "
                       "config.yaml; TensorBoard logs stay) and start from step 0, with any config")
    p.add_argument("--allow-config-change", action="store_true",
                   help="resume although the config differs from the run's config.yaml in fields that do not change "
                   "the model (epochs, learning rate, data, ...); the new values are recorded. Changes to model.* or "
                   "train.optimizer/mixed_precision are always refused (use --fresh or another --model-dir)")
    add_common_flags(p)
    return p


def overrides_from_flags(args) -> list:
    flags = []
    mapping = {
        "model_dir": "train.model_dir", "strategy": "train.strategy", "num_cpu_devices": "train.num_cpu_devices",
        "epochs": "train.epochs", "batch_size": "train.batch_size", "mixed_precision": "train.mixed_precision",
        "seed": "train.seed", "init_checkpoint": "train.init_checkpoint",
    }
    for attr, key in mapping.items():
        value = getattr(args, attr)
        if value is not None:
            flags.append(f"{key}={json.dumps(value)}")  # JSON is YAML: strings stay strings
    if args.xla is not None:
        flags.append("train.jit_compile=" + {"auto": "auto", "on": "true", "off": "false"}[args.xla])
    return flags


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args)
    from gscnn_tf.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides + overrides_from_flags(args))
    except ConfigError as exc:
        return fail(str(exc))
    from gscnn_tf.training.run import TrainingError, train

    logging.getLogger("gscnn_tf").info("training %s (%s, OS%d) -> %s", "Gated-SCNN" if cfg.model.shape_stream else "DeepLabV3+",
                                       cfg.model.backbone, cfg.model.output_stride, cfg.train.model_dir)
    try:
        # stdout: Keras' progress bar on a terminal, one line per epoch in a log file or pipe, nothing with --quiet.
        summary = train(cfg, fresh=args.fresh, require_resume=args.resume, allow_config_change=args.allow_config_change,
                        progress="off" if args.quiet else "auto")
    except (TrainingError, FileNotFoundError, ValueError) as exc:
        if args.log_level == "DEBUG":
            raise  # the full traceback, for bug reports
        # 2: the run could not start (nothing written); 1: it stopped (diverged, disk full, bad data).
        return fail(str(exc), getattr(exc, "exit_code", 2))
    logging.getLogger("gscnn_tf").info(
        "done: step %d in %.0f s; weights fingerprint %s; run directory %s",
        summary["global_step"], summary["seconds"], summary["weights_fingerprint"], summary["model_dir"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
