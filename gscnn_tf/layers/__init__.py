"""gscnn_tf.layers."""
