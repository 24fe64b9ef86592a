"""gscnn_tf.export: SavedModel export for TF Serving (signatures, warmup requests, label assets).

See :mod:`gscnn_tf.export.saved_model` for the signatures and docs/SERVING.md for serving.
"""
from gscnn_tf.export.saved_model import (  # noqa: F401
    BYTES_INPUT,
    CLASSES_FILL,
    DEFAULT_SIGNATURE,
    IMAGE_TENSOR_SIGNATURE,
    TENSOR_INPUT,
    ExportError,
    GSCNNServingModule,
    build_serving_module,
    export_saved_model,
    find_saved_model,
    is_saved_model_path,
    next_version,
)
