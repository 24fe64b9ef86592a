"""gscnn_tf.backbones."""
