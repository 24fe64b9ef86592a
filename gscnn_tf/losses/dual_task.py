"""L_reg-> (dual-task term, paper eq. 3): boundaries of the segmentation vs. GT boundaries.

    zeta     = (1 / sqrt 2) * | grad(G * argmax_k p(y | r, s)) |
    zeta_hat = the same on the one-hot ground truth
    L        = sum_{p in P+} |zeta(p) - zeta_hat(p)|  /  |P+|

Conventions (chosen so that a NumPy/SciPy reimplementation matches exactly):

* **argmax, forward and backward.** The forward value uses the hard one-hot
  ``argmax_k`` of the logits, without noise, exactly as in eq. 3. The backward pass uses
  the paper's relaxation: the gradient of the Gumbel-softmax
  ``softmax((logits + g) / tau)``, ``g ~ Gumbel(0, 1)`` (straight-through estimator:
  ``y = soft + stop_gradient(hard - soft)``). ``logits`` may replace ``log p`` because
  softmax is invariant to the per-pixel ``logsumexp`` shift. Noise comes from a
  ``keras.random.SeedGenerator`` (seed in the config), offset by the replica id under
  tf.distribute so replicas draw independent noise (on other Keras backends the noise is
  ``keras.random.uniform`` from the same generator); ``gumbel_noise=False`` gives the
  plain softmax straight-through estimator (deterministic gradient).
* **G**: separable Gaussian, std ``sigma``, radius ``int(truncate * sigma + 0.5)``,
  normalised, symmetric border extension (``scipy.ndimage.gaussian_filter(mode="reflect",
  truncate=truncate)``). Zero padding (as in ``keras.ops.image.gaussian_blur``) would
  invent an edge along the image border for every class touching it.
* **grad**: Sobel (``keras.ops.image.sobel_edges``, mirror border extension, i.e.
  ``scipy.ndimage.sobel(mode="mirror")``) divided by 4, i.e. a smoothed central
  difference across two pixels. For maps in [0, 1] each component is then in [-1, 1],
  so ``zeta_c = |grad_c| / sqrt 2`` is in [0, 1] per class channel (the reason for the
  paper's 1/sqrt 2).
* **Aggregation over classes**: ``zeta = max_c zeta_c`` (stays in [0, 1] without
  clipping; at a two-class border both channels have the same magnitude).
* **P+**: pixels where ``zeta > epsilon`` or ``zeta_hat > epsilon`` (``epsilon``
  absorbs float round-off; flat regions give exactly 0), excluding every pixel within
  the filters' footprint (Chebyshev distance ``radius + 1``) of an ignore pixel: the GT
  one-hot is all-zero there, so ``zeta_hat`` would show a fake boundary around every
  ignore region. The count is global across replicas; 0 when P+ is empty.
"""
from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from gscnn_tf.data.labels import IGNORE_LABEL
from gscnn_tf.losses.segmentation import DictLoss, global_sum, labels_of


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy.ndimage's Gaussian kernel: radius int(truncate*sigma + 0.5), sums to 1."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / float(sigma)) ** 2)
    return (k / k.sum()).astype(np.float32)


def _safe_sqrt(sq):
    """sqrt with a zero (not infinite) gradient at 0, the value at flat regions."""
    positive = ops.greater(sq, 0.0)
    return ops.where(positive, ops.sqrt(ops.where(positive, sq, ops.ones_like(sq))), ops.zeros_like(sq))


def boundary_potential(onehot, kernel1d: np.ndarray):
    """zeta = max_c |Sobel(G * onehot_c)| / (4 sqrt 2).

    Args:
        onehot: (B, H, W, K) float32 maps in [0, 1]; H, W >= the Gaussian radius.
        kernel1d: (2r+1,) Gaussian taps.

    Returns:
        (B, H, W) float32 in [0, 1].
    """
    radius = (len(kernel1d) - 1) // 2
    k = ops.shape(onehot)[-1]
    x = onehot
    if radius > 0:
        x = ops.pad(x, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="symmetric")
        taps = ops.convert_to_tensor(kernel1d, dtype="float32")
        ky = ops.tile(ops.reshape(taps, (-1, 1, 1, 1)), [1, 1, k, 1])
        kx = ops.tile(ops.reshape(taps, (1, -1, 1, 1)), [1, 1, k, 1])
        x = ops.depthwise_conv(x, ky, strides=1, padding="valid")
        x = ops.depthwise_conv(x, kx, strides=1, padding="valid")
    sobel = ops.image.sobel_edges(x, data_format="channels_last") / 4.0  # (B, H, W, K, 2)
    magnitude = _safe_sqrt(ops.sum(ops.square(sobel), axis=-1))
    return ops.max(magnitude, axis=-1) / math.sqrt(2.0)


@keras.saving.register_keras_serializable(package="gscnn_tf")
class DualTaskLoss(DictLoss):
    """Boundary-consistency L1 between predicted and GT boundary potentials.

    ``call(y_true, y_pred)``: ``y_true["label"]`` (B, H, W) int, ``y_pred["seg_logits"]``
    (B, H, W, K) -> scalar. K must be static; H, W must be >= the Gaussian radius.

    Args:
        tau: Gumbel-softmax temperature of the backward relaxation (paper 1.0).
        sigma, truncate: Gaussian smoothing (scipy conventions).
        epsilon: a pixel is "non-zero" where zeta or zeta_hat exceeds it.
        gumbel_noise: add Gumbel noise to the backward relaxation (paper: yes).
        seed: seed of the noise's ``SeedGenerator`` (None: random).
    """

    def __init__(
        self,
        tau: float = 1.0,
        sigma: float = 1.0,
        truncate: float = 4.0,
        epsilon: float = 1e-3,
        gumbel_noise: bool = True,
        seed=None,
        ignore_label: int = IGNORE_LABEL,
        name="dual_task",
        **kwargs,
    ):
        super().__init__(ignore_label=ignore_label, name=name, **kwargs)
        if tau <= 0 or sigma <= 0:
            raise ValueError(f"DualTaskLoss: tau and sigma must be > 0, got tau={tau}, sigma={sigma}")
        self.tau = float(tau)
        self.sigma = float(sigma)
        self.truncate = float(truncate)
        self.epsilon = float(epsilon)
        self.gumbel_noise = bool(gumbel_noise)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self._kernel1d = gaussian_kernel1d(self.sigma, self.truncate)

    @property
    def footprint_radius(self) -> int:
        """Chebyshev radius of the pixels one zeta value depends on (Gaussian + Sobel)."""
        return (len(self._kernel1d) - 1) // 2 + 1

    def _uniform_noise(self, like):
        """Uniform (0, 1) noise shaped like ``like``, from the SeedGenerator, distinct per replica.

        Under tf.distribute every replica reads the same generator state, so without the
        replica id all replicas would draw the same noise field (hence the TF ops there).
        Other Keras backends have no tf.distribute replicas: plain ``keras.random.uniform``.
        minval > 0 keeps -log(-log(u)) finite.
        """
        if keras.backend.backend() != "tensorflow":
            return keras.random.uniform(ops.shape(like), minval=1e-7, maxval=1.0, seed=self.seed_generator)
        import tensorflow as tf

        seed = tf.cast(tf.math.floormod(self.seed_generator.next(), 2**31 - 1), tf.int32)
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            replica = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
            seed = seed + tf.stack([tf.constant(0, tf.int32), replica * 1000003])
        return tf.random.stateless_uniform(tf.shape(like), seed=seed, minval=1e-7, maxval=1.0, dtype=tf.float32)

    def straight_through_argmax(self, logits):
        """Hard one-hot argmax forward, Gumbel-softmax gradient. (B,H,W,K) -> (B,H,W,K)."""
        num_classes = logits.shape[-1]
        hard = ops.one_hot(ops.argmax(logits, axis=-1), num_classes, dtype="float32")
        perturbed = logits
        if self.gumbel_noise:
            perturbed = logits + (-ops.log(-ops.log(self._uniform_noise(logits))))
        soft = ops.softmax(perturbed / self.tau, axis=-1)
        return soft + ops.stop_gradient(hard - soft)

    def call(self, y_true, y_pred):
        label, valid = labels_of(y_true, self.ignore_label)
        logits = ops.cast(y_pred["seg_logits"], "float32")
        num_classes = logits.shape[-1]
        if num_classes is None:
            raise ValueError("DualTaskLoss: the class axis of seg_logits must be static")

        pred_onehot = self.straight_through_argmax(logits)
        safe = ops.where(ops.cast(valid, "bool"), label, ops.zeros_like(label))
        gt_onehot = ops.one_hot(safe, num_classes, dtype="float32") * valid[..., None]

        zeta = boundary_potential(pred_onehot, self._kernel1d)
        zeta_hat = boundary_potential(gt_onehot, self._kernel1d)

        size = 2 * self.footprint_radius + 1
        near_ignore = ops.max_pool((1.0 - valid)[..., None], pool_size=size, strides=1, padding="same")[..., 0]
        nonzero = ops.logical_or(ops.greater(zeta, self.epsilon), ops.greater(zeta_hat, self.epsilon))
        mask = ops.cast(nonzero, "float32") * (1.0 - near_ignore)
        mask = ops.stop_gradient(mask)
        return ops.divide_no_nan(ops.sum(ops.abs(zeta - zeta_hat) * mask), global_sum(ops.sum(mask)))

    def get_config(self):
        config = super().get_config()
        config.update(
            tau=self.tau,
            sigma=self.sigma,
            truncate=self.truncate,
            epsilon=self.epsilon,
            gumbel_noise=self.gumbel_noise,
            seed=self.seed,
        )
        return config
