"""GSCNNLoss: the paper's weighted sum of the four terms (docs/PAPER.md section 2).

    total = edge_weight * BCE_edge + seg_weight * CE_seg
          + dual_task_weight * L_reg-> + attention_weight * L_reg<-      (paper: 20, 1, 1, 1)

Distribution convention (checked against the installed Keras 3.15 TF trainer):

* Every term is ``local_sum / global_count``: the pixel counts (valid pixels, boundary
  pixels, above-threshold pixels, dual-task P+ pixels) are all-reduced (SUM) across
  replicas, the numerators are not. A replica's value is therefore its *share* of the
  global-batch loss: the shares sum to the single-device value on the whole global
  batch, and so do their gradients.
* Keras' ``Loss.__call__`` divides by ``num_replicas`` (``scale_loss_for_distribution``)
  only inside its own non-scalar reduction; our terms override ``__call__`` and return
  the share unchanged, ``Trainer.compute_loss`` sums the compiled losses without
  rescaling, and the TF optimizer *sums* replica gradients
  (``_all_reduce_sum_gradients``). So the applied gradient is exactly the gradient of
  the global-batch loss; nothing must be divided by ``num_replicas`` again (doing so
  would shrink the learning rate by that factor).
* Logging: a share is not the global value. Sum it across replicas, or use Keras'
  convention: ``keras.src.losses.loss.unscale_loss_for_distribution`` (x num_replicas)
  fed to a ``Mean`` metric, which averages over replicas (exact for equal per-replica
  batch sizes, as ``model.fit`` produces). That is what ``compile(loss=GSCNNLoss(...))``
  does for the total.

With ``use_edge_terms=False`` (DeepLabV3+ baseline, no shape stream) only the
segmentation CE is computed; ``terms`` still returns all four keys, the edge terms as 0,
so logging code needs no special case.
"""
from __future__ import annotations

import dataclasses

import keras
from keras import ops

from gscnn_tf.config import LossConfig
from gscnn_tf.data.labels import IGNORE_LABEL
from gscnn_tf.losses.attention import AttentionLoss
from gscnn_tf.losses.dual_task import DualTaskLoss
from gscnn_tf.losses.edge_bce import BalancedEdgeBCE
from gscnn_tf.losses.segmentation import DictLoss, SegmentationCrossEntropy, labels_of, pixel_cross_entropy

TERM_NAMES = ("seg", "edge_bce", "attention", "dual_task")
_LOSS_FIELDS = tuple(f.name for f in dataclasses.fields(LossConfig))


@keras.saving.register_keras_serializable(package="gscnn_tf")
class GSCNNLoss(DictLoss):
    """Weighted sum of SegmentationCrossEntropy, BalancedEdgeBCE, DualTaskLoss, AttentionLoss.

    ``call(y_true, y_pred)``: ``y_true`` = {``label`` (B, H, W) int, ``boundary``
    (B, H, W) float}, ``y_pred`` = {``seg_logits`` (B, H, W, K), ``edge`` (B, H, W, 1)}
    -> scalar weighted total (per-replica share under a strategy, see module doc).

    Args:
        loss_config: a :class:`gscnn_tf.config.LossConfig` (or a dict of its fields);
            keyword arguments named like its fields override it.
        ignore_label: the void train id (the dataset's; None: an ``ignore_label`` inside an
            old serialised ``loss_config`` dict, else 255).
        use_edge_terms: False for the DeepLabV3+ baseline: only the segmentation CE.
        dual_task_seed: seed of the dual-task term's Gumbel noise (None: random).
        dual_task_gumbel_noise: see :class:`DualTaskLoss` ``gumbel_noise``.
    """

    def __init__(
        self,
        loss_config=None,
        *,
        ignore_label=None,
        use_edge_terms: bool = True,
        dual_task_seed=None,
        dual_task_gumbel_noise: bool = True,
        name="gscnn_loss",
        reduction="sum_over_batch_size",
        dtype=None,
        **overrides,
    ):
        if loss_config is None:
            fields = {}
        elif isinstance(loss_config, LossConfig):
            fields = dataclasses.asdict(loss_config)
        elif isinstance(loss_config, dict):
            fields = dict(loss_config)
        else:
            raise TypeError(f"GSCNNLoss: loss_config must be a LossConfig or dict, got {type(loss_config)}")
        unknown = sorted(set(overrides) - set(_LOSS_FIELDS))
        if unknown:
            raise TypeError(f"GSCNNLoss: unknown argument(s) {unknown}; LossConfig fields: {list(_LOSS_FIELDS)}")
        fields.update(overrides)
        legacy_ignore = fields.pop("ignore_label", IGNORE_LABEL)  # loss_config of .keras files of earlier versions
        self.config = LossConfig(**fields)
        ignore_label = legacy_ignore if ignore_label is None else ignore_label
        super().__init__(ignore_label=ignore_label, name=name, reduction=reduction, dtype=dtype)
        self.use_edge_terms = bool(use_edge_terms)
        self.dual_task_seed = dual_task_seed
        self.dual_task_gumbel_noise = bool(dual_task_gumbel_noise)

        c, ignore = self.config, self.ignore_label
        self.seg_loss = SegmentationCrossEntropy(ignore_label=ignore)
        self.edge_loss = BalancedEdgeBCE(ignore_label=ignore)
        self.attention_loss = AttentionLoss(threshold=c.attention_threshold, ignore_label=ignore)
        self.dual_task_loss = DualTaskLoss(
            tau=c.gumbel_tau,
            sigma=c.dual_task_sigma,
            gumbel_noise=dual_task_gumbel_noise,
            seed=dual_task_seed,
            ignore_label=ignore,
        )

    @property
    def weights(self) -> dict:
        c = self.config
        return {
            "seg": c.seg_weight,
            "edge_bce": c.edge_weight,
            "attention": c.attention_weight,
            "dual_task": c.dual_task_weight,
        }

    def terms(self, y_true, y_pred) -> dict:
        """Unweighted scalar terms ``{"seg", "edge_bce", "attention", "dual_task"}`` (float32)."""
        y_true, y_pred = self._standardize(y_true, y_pred)
        # The per-pixel CE is computed once for the segmentation and the attention term
        # (the same values each term's own ``call`` computes).
        label, _ = labels_of(y_true, self.ignore_label)
        ce, valid = pixel_cross_entropy(label, y_pred["seg_logits"], self.ignore_label)
        out = {"seg": self.seg_loss.reduce(ce, valid)}
        if self.use_edge_terms:
            out["edge_bce"] = self.edge_loss.call(y_true, y_pred)
            out["attention"] = self.attention_loss.reduce(ce, valid, y_pred["edge"])
            out["dual_task"] = self.dual_task_loss.call(y_true, y_pred)
        else:
            zero = ops.zeros((), dtype="float32")
            out.update(edge_bce=zero, attention=zero, dual_task=zero)
        return out

    def total(self, terms: dict):
        """Weighted sum of a ``terms()`` dict (lets a trainer log terms and total from one pass)."""
        w = self.weights
        names = TERM_NAMES if self.use_edge_terms else ("seg",)
        return sum(w[n] * terms[n] for n in names)

    def call(self, y_true, y_pred):
        return self.total(self.terms(y_true, y_pred))

    def get_config(self):
        config = super().get_config()  # holds ignore_label
        config.update(
            loss_config=dataclasses.asdict(self.config),
            use_edge_terms=self.use_edge_terms,
            dual_task_seed=self.dual_task_seed,
            dual_task_gumbel_noise=self.dual_task_gumbel_noise,
        )
        return config
