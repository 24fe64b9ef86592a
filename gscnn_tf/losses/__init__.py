"""gscnn_tf.losses."""
