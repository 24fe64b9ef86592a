"""gscnn_tf.training."""
