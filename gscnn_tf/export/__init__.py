"""gscnn_tf.export: SavedModel export for TF Serving (signatures, warmup requests, label assets).

Modules: :mod:`~gscnn_tf.export.saved_model` (export and its self-check; the contract),
:mod:`~gscnn_tf.export.serving_graph` (the serving ``tf.Module``),
:mod:`~gscnn_tf.export.image_headers` (in-graph checks of encoded images),
:mod:`~gscnn_tf.export.signatures` (signature, input and asset names),
:mod:`~gscnn_tf.export.versions` (version directories, lock, leftovers),
:mod:`~gscnn_tf.export.warmup` (TF Serving warmup requests). docs/SERVING.md: serving.
"""
from gscnn_tf.export.saved_model import ExportError, export_saved_model  # noqa: F401
from gscnn_tf.export.serving_graph import GSCNNServingModule, build_serving_module  # noqa: F401
from gscnn_tf.export.signatures import (  # noqa: F401
    BYTES_INPUT,
    CLASSES_FILL,
    DEFAULT_SIGNATURE,
    IMAGE_TENSOR_SIGNATURE,
    TENSOR_INPUT,
)
from gscnn_tf.export.versions import find_saved_model, is_saved_model_path, next_version  # noqa: F401
