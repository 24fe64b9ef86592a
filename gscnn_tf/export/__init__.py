"""gscnn_tf.export."""
