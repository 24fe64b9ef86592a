"""gscnn_tf.losses: ground-truth boundaries and the four Gated-SCNN loss terms.

See docs/ARCHITECTURE.md ("Targets", "Losses") and docs/PAPER.md section 2.
"""
from gscnn_tf.losses.attention import AttentionLoss
from gscnn_tf.losses.combined import TERM_NAMES, GSCNNLoss
from gscnn_tf.losses.dual_task import DualTaskLoss
from gscnn_tf.losses.edge_bce import BalancedEdgeBCE
from gscnn_tf.losses.segmentation import SegmentationCrossEntropy

__all__ = [
    "AttentionLoss",
    "BalancedEdgeBCE",
    "DualTaskLoss",
    "GSCNNLoss",
    "SegmentationCrossEntropy",
    "TERM_NAMES",
    "boundary_map",
]


def __getattr__(name):
    # boundary_map is TensorFlow code (it runs inside tf.data); importing it lazily keeps the
    # loss classes importable on other Keras backends.
    if name == "boundary_map":
        from gscnn_tf.losses.boundaries import boundary_map

        return boundary_map
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
