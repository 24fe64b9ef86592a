#!/usr/bin/env python
"""Export a Gated-SCNN checkpoint as a versioned SavedModel for TF Serving (see --help)."""
import sys

from gscnn_tf.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
