"""gscnn_tf.checkpoint_import: weights trained elsewhere -> a GatedSCNN run directory.

Modules: :mod:`.official_layout` (NumPy only: the official PyTorch Gated-SCNN state_dict's
layout), :mod:`.official_pytorch` (maps that state_dict onto a ``GatedSCNN``; reads ``.pth``
files, PyTorch needed only for those). Dataset conversion is elsewhere: :mod:`gscnn_tf.data.convert`.
"""
