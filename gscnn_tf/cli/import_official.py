"""``import_official_checkpoint.py``: the official PyTorch Gated-SCNN checkpoint -> a run directory.

The run directory (``config.yaml`` + ``checkpoints/best.weights.h5``) is what training writes,
so ``evaluate.py``, ``export_savedmodel.py`` and ``predict.py`` take it as it is. It is written
under a temporary name and renamed only when the whole conversion succeeded.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time

from gscnn_tf.cli.common import add_common_flags, configure_logging, fail

logger = logging.getLogger("gscnn_tf.import_official")

DEFAULT_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs", "cityscapes_wrn38_official.yaml"
)
IMPORT_INFO = "import_info.json"

EXAMPLES = """
examples:
  # the released Cityscapes model (best_cityscapes_checkpoint.pth, needs: pip install -e '.[convert]')
  python import_official_checkpoint.py --checkpoint best_cityscapes_checkpoint.pth --out runs/gscnn_wrn38_official
  # then, unchanged:
  python evaluate.py --checkpoint runs/gscnn_wrn38_official
  python export_savedmodel.py --checkpoint runs/gscnn_wrn38_official --export-dir exports/gscnn_wrn38

writes RUN_DIR/config.yaml (the --config, with train.model_dir = RUN_DIR),
RUN_DIR/checkpoints/best.weights.h5 and RUN_DIR/import_info.json (source file, epoch, mIoU
stored in the file, keys dropped). The weights are CC BY-NC-SA 4.0 like the official release.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="import_official_checkpoint.py",
        description="Convert the official PyTorch Gated-SCNN checkpoint (nv-tlabs/GSCNN, WideResNet-38) into a "
        "run directory of this package. Strict: every tensor must map (only *.num_batches_tracked, dsn1.* and "
        "criterion.* are dropped); nothing is written unless the whole conversion succeeds.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True,
                   help="the official .pth file (a {'state_dict': ...} snapshot or a bare state_dict, zip or legacy "
                   "format; needs PyTorch), or a .npz of the same tensors (no PyTorch needed)")
    p.add_argument("--out", required=True, help="run directory to create (must not exist unless --overwrite)")
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help="experiment YAML of the official model (default configs/cityscapes_wrn38_official.yaml); "
                   "must keep model.backbone=wrn38 and model.official_compat=true")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set data.val_pattern='data/cs/val_fine-*.tfrecord' "
                   "(repeatable; value parsed as YAML)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="if the safe loader (tensors and NumPy scalars only) refuses the .pth file, unpickle it fully; "
                   "only for files from a source you trust, unpickling can run code")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    add_common_flags(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args)
    if not os.path.isfile(args.checkpoint):
        return fail(f"{args.checkpoint}: checkpoint file not found")
    if not os.path.isfile(args.config):
        return fail(f"{args.config}: config file not found (pass --config configs/cityscapes_wrn38_official.yaml)")
    if os.path.exists(args.out) and not args.overwrite:
        return fail(f"{args.out}: already exists; choose another --out or pass --overwrite")

    from gscnn_tf.checkpoint_import.official_pytorch import OfficialCheckpointError, convert_official_checkpoint
    from gscnn_tf.config import ConfigError, load_config, save_config
    from gscnn_tf.training.checkpoints import BEST_WEIGHTS, CONFIG_NAME
    from gscnn_tf.utils.atomic import atomic_directory

    try:
        cfg = load_config(args.config, args.overrides)
    except (ConfigError, OSError) as exc:
        return fail(str(exc))
    if cfg.model.backbone != "wrn38" or not cfg.model.official_compat:
        return fail(f"{args.config}: the official weights need model.backbone=wrn38 and model.official_compat=true")
    cfg.train.model_dir = args.out
    cfg.train.init_checkpoint = None  # the run holds the imported weights; a fine-tune's config points here

    start = time.time()
    try:
        model, summary = convert_official_checkpoint(args.checkpoint, cfg, trust=args.trust_checkpoint, log=logger.info)
    except OfficialCheckpointError as exc:
        return fail(str(exc))
    logger.info("mapped %d tensors, dropped %d unused (%.0f s)", summary["mapped"], len(summary["dropped"]),
                time.time() - start)
    info = {
        "source": os.path.abspath(args.checkpoint),
        "mapped_tensors": summary["mapped"],
        "dropped_keys": summary["dropped"],
        **{f"source_{k}": v for k, v in summary["meta"].items()},
        "licence": "CC BY-NC-SA 4.0 (official Gated-SCNN release)",
    }
    try:
        with atomic_directory(args.out, overwrite=args.overwrite) as tmp:
            save_config(cfg, os.path.join(tmp, CONFIG_NAME))
            os.makedirs(os.path.join(tmp, os.path.dirname(BEST_WEIGHTS)))
            model.save_weights(os.path.join(tmp, BEST_WEIGHTS))
            with open(os.path.join(tmp, IMPORT_INFO), "w", encoding="utf-8") as f:
                json.dump(info, f, indent=2)
    except OSError as exc:
        return fail(f"{args.out}: cannot write the run directory ({exc})")
    meta = summary["meta"]
    stored = f", file's val mIoU {meta['mean_iu']:.4f} at epoch {meta.get('epoch')}" if "mean_iu" in meta else ""
    print(f"wrote {args.out} ({summary['mapped']} tensors{stored}); evaluate with: "
          f"python evaluate.py --checkpoint {args.out}")
    return 0
