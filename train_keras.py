#!/usr/bin/env python
"""Train Gated-SCNN with keras model.fit (see `python train_keras.py --help`)."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from gscnn_tf.cli.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
