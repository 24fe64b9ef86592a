"""gscnn_tf.evaluation: scoring a trained model with the paper's metrics.

Modules: :mod:`.evaluate` (``evaluate(model, dataset, eval_config)``, image by image),
:mod:`.inference` (multi-scale + flip predictions), :mod:`.tiled` (the same, sliding-window, one
tile at a time), :mod:`.report` (the metrics dict and its
JSON / Markdown files). Nothing is imported here, so the report can be read without TensorFlow.
"""
