"""gscnn_tf.deploy: running exported LiteRT (``.tflite``) and ONNX files without TensorFlow.

Modules: :mod:`~gscnn_tf.deploy.runtime` (load and run a model file, any image size) and
:mod:`~gscnn_tf.deploy.tiles` (sliding-window tile positions and blending, shared with the
TensorFlow tiled inference). NumPy and the runtime's own package only; docs/DEPLOYMENT.md.
"""
