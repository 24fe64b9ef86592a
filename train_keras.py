#!/usr/bin/env python
"""Train Gated-SCNN with keras model.fit (see `python train_keras.py --help`)."""
import sys

from gscnn_tf.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
