"""The training wrapper: the inference network plus the Gated-SCNN losses, for ``model.fit``.

``build_gscnn`` returns the *inference* model (image -> {seg_logits, edge}); exports and
evaluation use it as it is. ``GSCNNTrainer`` wraps it for training: ``compute_loss`` evaluates
the four loss terms on the output dict and the targets dict, and every term is logged as
its own metric (``loss_seg``, ``loss_edge_bce``, ``loss_attention``, ``loss_dual_task``),
next to ``loss`` (the weighted total) and ``miou`` (streaming, on the training crops).

Distribution convention: the loss terms return each replica's *share* of the global-batch
loss (normalised by global pixel counts), so summing replica gradients — what
MirroredStrategy does — yields the gradient of the global-batch loss. ``compute_loss`` is
overridden, so Keras' own per-replica ``1 / num_replicas`` loss scaling (applied inside
``keras.losses.Loss.__call__``) does not happen on top of that. The logged values are
the global ones (shares all-reduced before they reach the metrics), so a 2-replica run
logs the same numbers as a 1-device run on the same global batch.
"""
from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from gscnn_tf.losses import TERM_NAMES
from gscnn_tf.losses.segmentation import global_sum


def _num_replicas() -> int:
    return tf.distribute.get_strategy().num_replicas_in_sync


def _in_multi_worker_mode() -> bool:
    strategy = tf.distribute.get_strategy()
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.extended._in_multi_worker_mode()


class GSCNNTrainer(keras.Model):
    """``model.fit``-able wrapper around the inference network.

    Args:
        network: the model from ``build_gscnn``: image (B, H, W, 3) -> dict with
            ``seg_logits`` (B, H, W, K) and ``edge`` (B, H, W, 1).
        loss_config: ``LossConfig`` (term weights, threshold, Gumbel tau, ...).
        num_classes: K, for the streaming mIoU.
        use_edge_terms: False for the DeepLabV3+ baseline (no shape stream): only the
            segmentation cross-entropy is optimised.
        seed: seed of the dual-task term's Gumbel noise (None: random).
    """

    def __init__(self, network, loss_config, num_classes: int, use_edge_terms: bool = True, seed=None, **kwargs):
        super().__init__(**kwargs)
        from gscnn_tf.losses import GSCNNLoss
        from gscnn_tf.metrics.confusion import StreamingMeanIoU

        self.network = network
        self.loss_config = loss_config
        self.use_edge_terms = use_edge_terms
        self.gscnn_loss = GSCNNLoss(
            loss_config, use_edge_terms=use_edge_terms, dual_task_seed=seed,
            dual_task_gumbel_noise=loss_config.gumbel_noise,
        )
        self.term_trackers = {name: keras.metrics.Mean(name=f"loss_{name}") for name in TERM_NAMES}
        # Reported as "loss" in place of Keras' own tracker, which sees one replica's share.
        self.total_tracker = keras.metrics.Mean(name="loss")
        self.miou = StreamingMeanIoU(num_classes=num_classes, name="miou")

    def call(self, inputs, training=False):
        return self.network(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        terms = {k: ops.cast(v, "float32") for k, v in self.gscnn_loss.terms(y, y_pred).items()}
        total = self.gscnn_loss.total(terms)
        # Layer losses (none by default: weight decay lives in the optimizer); Keras would
        # average them over replicas, so they are shared out the same way as the terms.
        if self.losses:
            total = total + ops.sum(ops.stack([ops.cast(l, "float32") for l in self.losses])) / _num_replicas()
        # Log global values: Keras reads metric variables per replica (the logs show replica
        # 0's), so the shares are summed across replicas first; no gradient flows here.
        logged = global_sum(ops.stack([terms[n] for n in TERM_NAMES] + [total]))
        for i, name in enumerate(TERM_NAMES):
            self.term_trackers[name].update_state(logged[i])
        self.total_tracker.update_state(logged[-1])
        return total

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3.15 (TF backend, any strategy scope) pulls a batch off the training
        # iterator here and MEAN-reduces it across replicas just to build the model. That
        # (1) fails under MultiWorkerMirroredStrategy ("Attempt to convert a value
        # (PerReplica...) to a Tensor") and (2) skips a training batch, so a 2-replica run
        # would not see the data a 1-device run sees. run.py builds the model and optimizer
        # before fit, so there is nothing left to build.
        if self.built and self.optimizer is not None and self.optimizer.built:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        self.miou.update_state(y["label"], y_pred["seg_logits"])
        results = self.get_metrics_result()
        if _in_multi_worker_mode():
            # Keras 3.15 reduces step logs across workers with strategy.reduce("MEAN", v,
            # axis=0), which fails on scalars; the values are already global, so a length-1
            # axis makes that reduction a no-op.
            results = {name: ops.reshape(value, (1,)) for name, value in results.items()}
        return results

    @property
    def metrics(self):
        # Order = order in the progress bar and logs.
        return [self.total_tracker, *self.term_trackers.values(), self.miou]
