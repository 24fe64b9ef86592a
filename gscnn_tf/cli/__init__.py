"""gscnn_tf.cli."""
