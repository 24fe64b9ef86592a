"""gscnn_tf.metrics."""
