"""gscnn_tf.deploy: running exported LiteRT (``.tflite``) and ONNX files without TensorFlow.

Modules: :mod:`~gscnn_tf.deploy.tiles` (sliding-window tile positions, shared with the
TensorFlow tiled inference). NumPy and the runtime's own package only; docs/DEPLOYMENT.md.
"""
