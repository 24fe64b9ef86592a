"""gscnn_tf.data."""
