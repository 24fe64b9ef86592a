"""gscnn_tf: Gated-SCNN semantic segmentation for TensorFlow 2 / Keras 3.

The model is :class:`gscnn_tf.model.GatedSCNN` (also ``gscnn_tf.GatedSCNN``): it takes RGB
images in 0..255 and carries its preprocessing, loss and metrics.

Importing the package registers every Gated-SCNN layer, loss and metric with Keras, so
``import gscnn_tf`` is all ``keras.saving.load_model("model.keras")`` needs. On the TensorFlow
backend, TensorFlow is imported first with its start-up noise filtered
(:mod:`gscnn_tf.utils.quiet_tensorflow`).

On a deployment machine with neither Keras nor TensorFlow installed, the package still
imports (without the model), so that :mod:`gscnn_tf.deploy` runs LiteRT / ONNX files there.
"""

from gscnn_tf.utils.quiet_tensorflow import import_tensorflow_quietly as _import_tensorflow_quietly
from gscnn_tf.utils.quiet_tensorflow import keras_backend_name as _keras_backend_name

try:
    if _keras_backend_name() == "tensorflow":
        _import_tensorflow_quietly()
    import keras as _keras  # noqa: F401
except ModuleNotFoundError as _missing:
    if _missing.name not in ("keras", "tensorflow", _keras_backend_name()):
        raise  # a broken install, not a missing framework
    __all__ = []  # a runtime-only install (ai-edge-litert / onnxruntime): gscnn_tf.deploy only
else:
    from gscnn_tf import layers, losses, metrics  # noqa: F401  (registers the Keras objects)
    from gscnn_tf.model import GatedSCNN  # noqa: F401

    __all__ = ["GatedSCNN"]
