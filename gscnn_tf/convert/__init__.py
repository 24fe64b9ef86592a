"""Importing weights trained elsewhere: the official PyTorch Gated-SCNN checkpoint.

``official_layout`` (NumPy only) describes the official state_dict; ``official_pytorch`` maps
it onto a ``GatedSCNN`` and reads ``.pth`` files (PyTorch needed only for those).
"""
