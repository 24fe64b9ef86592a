"""BatchNormalization factory: one place decides between plain BN and SyncBN.

The paper trains with synchronized BatchNorm across 8 GPUs (batch 2 per GPU); per-replica
statistics over 2 images are too noisy, so under a tf.distribute strategy the default
("auto") is ``synchronized=True``, which all-reduces the batch moments across replicas.
"""
from __future__ import annotations

import keras

# Matches PyTorch's BatchNorm2d defaults (momentum 0.1 there == 0.9 here, eps 1e-5), which the
# official implementation and torchvision-style backbones use.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def resolve_sync(sync="auto") -> bool:
    """``"auto"``: SyncBN exactly when a (non-default) distribution strategy is active.

    tf.distribute strategies exist only on the TensorFlow backend; on another Keras backend
    (JAX on a GPU, for instance) "auto" means plain BatchNormalization.
    """
    if sync == "auto":
        if keras.backend.backend() != "tensorflow":
            return False
        import tensorflow as tf

        return tf.distribute.has_strategy() and tf.distribute.get_strategy().num_replicas_in_sync > 1
    return bool(sync)


def batch_norm(name=None, sync="auto", momentum=BN_MOMENTUM, epsilon=BN_EPSILON, **kwargs):
    """Returns a ``keras.layers.BatchNormalization`` over the channel (last) axis."""
    return keras.layers.BatchNormalization(
        axis=-1, momentum=momentum, epsilon=epsilon, synchronized=resolve_sync(sync), name=name, **kwargs
    )
