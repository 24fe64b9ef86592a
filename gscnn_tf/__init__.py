"""gscnn_tf: Gated-SCNN semantic segmentation for TensorFlow 2 / Keras 3.

The model is :class:`gscnn_tf.model.GatedSCNN` (also ``gscnn_tf.GatedSCNN``): it takes RGB
images in 0..255 and carries its preprocessing, loss and metrics. Imported lazily, so the
command-line tools can answer ``--help`` without loading TensorFlow.
"""


def __getattr__(name):
    if name == "GatedSCNN":
        from gscnn_tf.model import GatedSCNN

        return GatedSCNN
    raise AttributeError(f"module 'gscnn_tf' has no attribute {name!r}")


__all__ = ["GatedSCNN"]
