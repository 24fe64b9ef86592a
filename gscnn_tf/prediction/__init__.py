"""gscnn_tf.prediction: predicting image files and drawing the results.

Modules: :mod:`.files` (a ``Predictor`` from a SavedModel or a checkpoint, run over image
files), :mod:`.visualize` (colour masks, overlays, edge maps, label-id PNGs). Nothing is
imported here, so ``predict.py --help`` answers without TensorFlow.
"""
