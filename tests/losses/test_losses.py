"""The four Gated-SCNN loss terms vs. independent NumPy/SciPy computations."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import ndimage
from scipy.special import log_softmax

from gscnn_tf.config import LossConfig
from gscnn_tf.losses import (
    AttentionLoss,
    BalancedEdgeBCE,
    DualTaskLoss,
    GSCNNLoss,
    SegmentationCrossEntropy,
    boundary_map,
)
from gscnn_tf.training.distribute import cpu_mirrored_strategy

IGNORE = 255
K = 4


# ----------------------------------------------------------------------------- data


def blobby_labels(rng, b, h, w, k=K, ignore_frac=0.1):
    noise = ndimage.gaussian_filter(rng.normal(size=(b, k, h, w)), sigma=(0, 0, 2.0, 2.0))
    label = noise.argmax(1).astype(np.int32)
    ign = ndimage.gaussian_filter(rng.normal(size=(b, h, w)), (0, 2.0, 2.0))
    label[ign > np.quantile(ign, 1 - ignore_frac)] = IGNORE
    return label


def make_batch(seed=0, b=2, h=20, w=24, k=K, logit_scale=3.0):
    rng = np.random.default_rng(seed)
    label = blobby_labels(rng, b, h, w, k)
    # Smooth logits so the predicted map has blob-like regions too.
    logits = ndimage.gaussian_filter(rng.normal(size=(b, h, w, k)), sigma=(0, 1.5, 1.5, 0)) * logit_scale * 4
    edge = 1.0 / (1.0 + np.exp(-rng.normal(scale=2.0, size=(b, h, w, 1))))
    boundary = boundary_map(label).numpy()
    y_true = {"label": label, "boundary": boundary}
    y_pred = {"seg_logits": logits.astype(np.float32), "edge": edge.astype(np.float32)}
    return y_true, y_pred


def tensors(d):
    return {k: tf.constant(v) for k, v in d.items()}


# ----------------------------------------------------------------------------- NumPy references


def np_pixel_ce(label, logits):
    valid = label != IGNORE
    lsm = log_softmax(logits.astype(np.float64), axis=-1)
    safe = np.where(valid, label, 0)
    ce = -np.take_along_axis(lsm, safe[..., None], axis=-1)[..., 0]
    return np.where(valid, ce, 0.0), valid


def np_seg_ce(y_true, y_pred):
    ce, valid = np_pixel_ce(y_true["label"], y_pred["seg_logits"])
    return ce.sum() / max(valid.sum(), 1)


def np_edge_bce(y_true, y_pred, eps=1e-7):
    valid = y_true["label"] != IGNORE
    b = (y_true["boundary"] > 0.5) & valid
    n = valid.sum()
    if n == 0:
        return 0.0
    npos = b.sum()
    nneg = n - npos
    s = np.clip(y_pred["edge"][..., 0].astype(np.float64), eps, 1 - eps)
    per = -(nneg / n * b * np.log(s) + npos / n * (valid & ~b) * np.log(1 - s))
    return per.sum() / n


def np_attention(y_true, y_pred, thr=0.8):
    ce, valid = np_pixel_ce(y_true["label"], y_pred["seg_logits"])
    mask = (y_pred["edge"][..., 0] > thr) & valid
    return (ce * mask).sum() / mask.sum() if mask.sum() else 0.0


def np_zeta(onehot, sigma=1.0, truncate=4.0):
    """max_c |Sobel(G * onehot_c)| / (4 sqrt 2), SciPy borders: Gaussian 'reflect', Sobel 'mirror'."""
    b, h, w, k = onehot.shape
    out = np.zeros((b, h, w))
    for i in range(b):
        for c in range(k):
            g = ndimage.gaussian_filter(onehot[i, :, :, c], sigma, mode="reflect", truncate=truncate)
            gy = ndimage.sobel(g, axis=0, mode="mirror") / 4.0
            gx = ndimage.sobel(g, axis=1, mode="mirror") / 4.0
            out[i] = np.maximum(out[i], np.hypot(gx, gy) / math.sqrt(2.0))
    return out


def np_dual_task(y_true, y_pred, sigma=1.0, truncate=4.0, eps=1e-3, return_parts=False):
    label, logits = y_true["label"], y_pred["seg_logits"]
    k = logits.shape[-1]
    pred = np.eye(k)[logits.argmax(-1)]
    valid = label != IGNORE
    gt = np.eye(k)[np.where(valid, label, 0)] * valid[..., None]
    zeta, zeta_hat = np_zeta(pred, sigma, truncate), np_zeta(gt, sigma, truncate)
    reach = int(truncate * sigma + 0.5) + 1  # Gaussian radius + Sobel
    near_ignore = ndimage.maximum_filter(~valid, size=(1, 2 * reach + 1, 2 * reach + 1), mode="constant", cval=0)
    mask = ((zeta > eps) | (zeta_hat > eps)) & ~near_ignore
    value = (np.abs(zeta - zeta_hat) * mask).sum() / mask.sum() if mask.sum() else 0.0
    return (value, zeta, zeta_hat, mask) if return_parts else value


# ----------------------------------------------------------------------------- values


def test_edge_bce_from_logits_equals_bce_on_probabilities_and_survives_saturation():
    y_true, y_pred = make_batch(0)
    t, p = tensors(y_true), tensors(y_pred)
    logits = np.log(y_pred["edge"]) - np.log1p(-y_pred["edge"])  # sigmoid^-1
    with_logits = dict(p, edge_logits=tf.constant(logits.astype(np.float32)))
    np.testing.assert_allclose(BalancedEdgeBCE()(t, with_logits).numpy(), np_edge_bce(y_true, y_pred), rtol=1e-4)

    # Saturated logits: sigmoid(40) == 1.0 exactly in float32. From probabilities the
    # (clipped) BCE has no gradient there; from logits every pixel gets w * (p - y).
    z = tf.Variable(np.full_like(logits, 40.0, dtype=np.float32))
    with tf.GradientTape(persistent=True) as tape:
        from_logits = BalancedEdgeBCE()(t, dict(p, edge=tf.sigmoid(z), edge_logits=z))
        from_probs = BalancedEdgeBCE()(t, dict(p, edge=tf.sigmoid(z)))
    g_logits, g_probs = tape.gradient(from_logits, z).numpy(), tape.gradient(from_probs, z).numpy()
    valid = y_true["label"] != IGNORE
    negative = valid & ~(y_true["boundary"] > 0.5)
    assert np.all(g_logits[..., 0][negative] > 0)  # pushes the saturated negatives back down
    assert np.all(g_probs == 0)
    assert np.isfinite(from_logits.numpy()) and from_logits.numpy() > 1.0


@pytest.mark.parametrize("seed", [0, 1])
def test_terms_match_numpy(seed):
    y_true, y_pred = make_batch(seed)
    t, p = tensors(y_true), tensors(y_pred)
    assert 0 < (p["edge"].numpy() > 0.8).sum() < p["edge"].numpy().size
    np.testing.assert_allclose(SegmentationCrossEntropy()(t, p).numpy(), np_seg_ce(y_true, y_pred), rtol=1e-5)
    np.testing.assert_allclose(BalancedEdgeBCE()(t, p).numpy(), np_edge_bce(y_true, y_pred), rtol=1e-5)
    np.testing.assert_allclose(AttentionLoss(threshold=0.8)(t, p).numpy(), np_attention(y_true, y_pred), rtol=1e-5)
    for sigma in (1.0, 0.7):
        expected = np_dual_task(y_true, y_pred, sigma=sigma)
        got = DualTaskLoss(sigma=sigma, seed=seed)(t, p).numpy()
        assert expected > 0.01
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_dual_task_intermediates_match_scipy():
    """zeta itself (not just the scalar) matches SciPy, and stays in [0, 1]."""
    from gscnn_tf.losses.dual_task import boundary_potential, gaussian_kernel1d

    y_true, y_pred = make_batch(3)
    _, zeta_np, zeta_hat_np, mask_np = np_dual_task(y_true, y_pred, return_parts=True)
    pred = np.eye(K)[y_pred["seg_logits"].argmax(-1)].astype(np.float32)
    zeta = boundary_potential(tf.constant(pred), gaussian_kernel1d(1.0, 4.0)).numpy()
    np.testing.assert_allclose(zeta, zeta_np, atol=2e-6)
    assert zeta.max() <= 1.0 + 1e-6 and zeta.max() > 0.3
    assert 0 < mask_np.sum() < mask_np.size
    # A straight two-class border: zeta peaks at the two pixels next to it, equal by symmetry.
    step = np.zeros((1, 12, 12, 2), np.float32)
    step[..., :6, 0] = 1
    step[..., 6:, 1] = 1
    z = boundary_potential(tf.constant(step), gaussian_kernel1d(1.0, 4.0)).numpy()[0]
    assert np.argmax(z[5]) in (5, 6) and abs(z[5, 5] - z[5, 6]) < 1e-6
    np.testing.assert_allclose(z, np_zeta(step)[0], atol=2e-6)


def test_combined_is_weighted_sum_with_paper_weights():
    y_true, y_pred = make_batch(4)
    t, p = tensors(y_true), tensors(y_pred)
    loss = GSCNNLoss(LossConfig(), dual_task_seed=0)
    terms = {k: v.numpy() for k, v in loss.terms(t, p).items()}
    assert set(terms) == {"seg", "edge_bce", "attention", "dual_task"}
    expected = {
        "seg": np_seg_ce(y_true, y_pred),
        "edge_bce": np_edge_bce(y_true, y_pred),
        "attention": np_attention(y_true, y_pred),
        "dual_task": np_dual_task(y_true, y_pred),
    }
    for name in expected:
        np.testing.assert_allclose(terms[name], expected[name], rtol=1e-4, atol=1e-6, err_msg=name)
    total = 20 * expected["edge_bce"] + expected["seg"] + expected["attention"] + expected["dual_task"]
    np.testing.assert_allclose(loss(t, p).numpy(), total, rtol=1e-4)
    # kwargs override the config; baseline: only the CE.
    loss2 = GSCNNLoss(edge_weight=2.0, attention_threshold=0.5)
    assert loss2.config.edge_weight == 2.0 and loss2.attention_loss.threshold == 0.5
    base = GSCNNLoss(use_edge_terms=False)
    bterms = base.terms(t, p)
    assert float(bterms["edge_bce"]) == float(bterms["attention"]) == float(bterms["dual_task"]) == 0.0
    np.testing.assert_allclose(base(t, p).numpy(), expected["seg"], rtol=1e-5)
    with pytest.raises(TypeError):
        GSCNNLoss(edge_wieght=3.0)


def test_combined_shares_one_cross_entropy_with_the_same_values_and_gradients():
    """GSCNNLoss computes the per-pixel CE once for the seg and attention terms: the terms and
    their gradients equal those of the standalone term objects, bit for bit."""
    y_true, y_pred = make_batch(6)
    t, p = tensors(y_true), tensors(y_pred)
    loss = GSCNNLoss(LossConfig(), dual_task_seed=0)
    logits = p["seg_logits"]

    def value_and_grad(fn):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            value = fn(dict(p, seg_logits=logits))
        return value.numpy(), tape.gradient(value, logits).numpy()

    for name, standalone in (("seg", SegmentationCrossEntropy()), ("attention", AttentionLoss(threshold=0.8))):
        shared = value_and_grad(lambda q, name=name: loss.terms(t, q)[name])
        alone = value_and_grad(lambda q, standalone=standalone: standalone(t, q))
        np.testing.assert_array_equal(shared[0], alone[0], err_msg=name)
        np.testing.assert_array_equal(shared[1], alone[1], err_msg=name)
        assert np.abs(shared[1]).max() > 0
    graph = tf.function(lambda q: loss.terms(t, q)).get_concrete_function(p).graph
    assert sum(op.type == "SparseSoftmaxCrossEntropyWithLogits" for op in graph.get_operations()) == 1


def test_float16_inputs_are_computed_in_float32():
    y_true, y_pred = make_batch(5)
    p16 = {k: tf.constant(v.astype(np.float16)) for k, v in y_pred.items()}
    ref = {k: v.astype(np.float16).astype(np.float32) for k, v in y_pred.items()}
    t = tensors(y_true)
    terms = GSCNNLoss(dual_task_seed=0).terms(t, p16)
    for v in terms.values():
        assert v.dtype == tf.float32
    np.testing.assert_allclose(terms["seg"].numpy(), np_seg_ce(y_true, ref), rtol=1e-5)
    np.testing.assert_allclose(terms["edge_bce"].numpy(), np_edge_bce(y_true, ref), rtol=1e-5)
    np.testing.assert_allclose(terms["dual_task"].numpy(), np_dual_task(y_true, ref), rtol=1e-4, atol=1e-5)
    # float labels (e.g. after a Keras cast) are still exact class ids
    t_float = dict(t, label=tf.cast(t["label"], tf.float32))
    np.testing.assert_allclose(SegmentationCrossEntropy()(t_float, p16).numpy(), terms["seg"].numpy(), rtol=1e-6)


# ----------------------------------------------------------------------------- edge cases


def _value_and_grads(loss, y_true, y_pred):
    logits = tf.Variable(y_pred["seg_logits"])
    edge = tf.Variable(y_pred["edge"])
    with tf.GradientTape() as tape:
        terms = loss.terms(tensors(y_true), {"seg_logits": logits, "edge": edge})
        total = loss.total(terms)
    grads = tape.gradient(total, [logits, edge])
    return {k: v.numpy() for k, v in terms.items()}, float(total), [g.numpy() for g in grads]


def _edge_cases():
    y_true, y_pred = make_batch(6)
    cases = {}
    t = dict(y_true, label=np.full_like(y_true["label"], IGNORE), boundary=np.zeros_like(y_true["boundary"]))
    cases["all_ignored"] = (t, y_pred)
    single = np.full_like(y_true["label"], 2)
    cases["single_class"] = (dict(label=single, boundary=boundary_map(single).numpy()), y_pred)
    cases["no_boundary"] = (dict(y_true, boundary=np.zeros_like(y_true["boundary"])), y_pred)
    cases["none_above_threshold"] = (y_true, dict(y_pred, edge=np.full_like(y_pred["edge"], 0.5)))
    ext = np.where(np.random.default_rng(0).random(y_pred["seg_logits"].shape) > 0.5, 1e4, -1e4).astype(np.float32)
    cases["extreme_logits"] = (y_true, dict(seg_logits=ext, edge=np.where(ext[..., :1] > 0, 1.0, 0.0).astype(np.float32)))
    return cases


@pytest.mark.parametrize("case", ["all_ignored", "single_class", "no_boundary", "none_above_threshold", "extreme_logits"])
def test_edge_cases_are_finite(case):
    y_true, y_pred = _edge_cases()[case]
    terms, total, grads = _value_and_grads(GSCNNLoss(dual_task_seed=1), y_true, y_pred)
    assert all(np.isfinite(v) for v in terms.values()), terms
    assert np.isfinite(total)
    for g in grads:
        assert g is not None and np.all(np.isfinite(g))
    if case == "all_ignored":
        assert all(v == 0.0 for v in terms.values())
        assert all(np.all(g == 0) for g in grads)
    if case == "none_above_threshold":
        assert terms["attention"] == 0.0
    if case == "no_boundary":  # all weight on negatives: w_neg = 0 -> the term vanishes
        assert terms["edge_bce"] == 0.0
    if case == "extreme_logits":
        np.testing.assert_allclose(terms["seg"], np_seg_ce(y_true, y_pred), rtol=1e-5)
        np.testing.assert_allclose(terms["dual_task"], np_dual_task(y_true, y_pred), rtol=1e-4, atol=1e-5)
    if case in ("single_class", "none_above_threshold", "no_boundary"):
        np.testing.assert_allclose(terms["dual_task"], np_dual_task(y_true, y_pred), rtol=1e-4, atol=1e-5)


def test_dual_task_gradient_reaches_logits():
    y_true, y_pred = make_batch(7)
    for noise in (True, False):
        loss = DualTaskLoss(seed=3, gumbel_noise=noise)
        logits = tf.Variable(y_pred["seg_logits"])
        with tf.GradientTape() as tape:
            value = loss(tensors(y_true), {"seg_logits": logits})
        g = tape.gradient(value, logits).numpy()
        assert np.all(np.isfinite(g)) and np.abs(g).sum() > 1e-3
        # The gradient is local: pixels far (> footprint) from every P+ pixel get none.
        _, _, _, mask = np_dual_task(y_true, y_pred, return_parts=True)
        reach = loss.footprint_radius
        near = ndimage.maximum_filter(mask, size=(1, 2 * reach + 1, 2 * reach + 1), mode="constant")
        assert np.all(g[~near] == 0)


def test_gumbel_noise_changes_gradient_not_value():
    y_true, y_pred = make_batch(8)
    loss = DualTaskLoss(seed=11, tau=1.0)
    logits = tf.Variable(y_pred["seg_logits"])
    vals, grads = [], []
    for _ in range(2):
        with tf.GradientTape() as tape:
            v = loss(tensors(y_true), {"seg_logits": logits})
        vals.append(float(v))
        grads.append(tape.gradient(v, logits).numpy())
    assert vals[0] == pytest.approx(vals[1], rel=1e-6)
    assert not np.allclose(grads[0], grads[1])  # a fresh noise sample each call


def test_edge_bce_weights_and_no_double_sigmoid():
    """Hand-sized case: 1 positive, 3 negatives, 1 ignored."""
    label = np.array([[[0, 0, 1, 1, IGNORE]]], np.int32)
    boundary = np.array([[[0, 1, 0, 0, 0]]], np.float32)
    s = np.array([0.2, 0.6, 0.3, 0.1, 0.9], np.float32).reshape(1, 1, 5, 1)
    got = BalancedEdgeBCE()({"label": label, "boundary": boundary}, {"edge": s}).numpy()
    # w_pos = 3/4, w_neg = 1/4, mean over 4 valid pixels; probabilities used as is
    expected = -(0.75 * np.log(0.6) + 0.25 * (np.log(0.8) + np.log(0.7) + np.log(0.9))) / 4
    np.testing.assert_allclose(got, expected, rtol=1e-6)


# ----------------------------------------------------------------------------- serialisation


def test_get_config_round_trips():
    y_true, y_pred = make_batch(9)
    t, p = tensors(y_true), tensors(y_pred)
    losses = [
        SegmentationCrossEntropy(ignore_label=255),
        BalancedEdgeBCE(epsilon=1e-6),
        AttentionLoss(threshold=0.7),
        DualTaskLoss(tau=0.5, sigma=1.5, epsilon=1e-4, seed=5, gumbel_noise=False),
        GSCNNLoss(LossConfig(edge_weight=10.0, gumbel_tau=0.5), use_edge_terms=True, dual_task_seed=4),
        GSCNNLoss(use_edge_terms=False),
    ]
    for loss in losses:
        config = loss.get_config()
        clone = type(loss).from_config(config)
        assert clone.get_config() == config
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
        assert type(restored) is type(loss) and restored.get_config() == config
        np.testing.assert_allclose(restored(t, p).numpy(), loss(t, p).numpy(), rtol=1e-6)
    assert losses[4].get_config()["loss_config"]["edge_weight"] == 10.0
    assert losses[4].dual_task_loss.tau == 0.5


# ----------------------------------------------------------------------------- training


def _tiny_model(k, edge_bias=0.0):
    x = keras.Input((None, None, 3))
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(h)
    seg = keras.layers.Conv2D(k, 1, name="seg_logits")(h)
    edge_init = keras.initializers.Constant(edge_bias)
    edge = keras.layers.Conv2D(1, 1, activation="sigmoid", bias_initializer=edge_init, name="edge")(h)
    return keras.Model(x, {"seg_logits": seg, "edge": edge})


def _rectangles(h=32, w=32):
    label = np.zeros((1, h, w), np.int32)
    label[0, 4:20, 3:14] = 1
    label[0, 12:28, 16:29] = 2
    label[0, 26:, :6] = IGNORE
    colours = np.array([[0.2, 0.5, -0.4], [-0.6, 0.1, 0.8], [0.7, -0.7, 0.0]], np.float32)
    image = colours[np.where(label == IGNORE, 0, label)]
    image += np.random.default_rng(0).normal(scale=0.1, size=image.shape).astype(np.float32)
    return image, {"label": label, "boundary": boundary_map(label).numpy()}


def test_tiny_model_training_reduces_every_term():
    keras.utils.set_random_seed(0)
    image, y_true = _rectangles(24, 24)
    t = tensors(y_true)
    model = _tiny_model(3, edge_bias=2.0)  # edge starts above 0.8, so the attention term is active
    loss = GSCNNLoss(dual_task_seed=0)
    opt = keras.optimizers.Adam(2e-2)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            terms = loss.terms(t, model(image, training=True))
            total = loss.total(terms)
        opt.apply_gradients(zip(tape.gradient(total, model.trainable_weights), model.trainable_weights))
        return terms

    history = [{k: float(v) for k, v in step().items()} for _ in range(30)]
    first, last = history[0], history[-1]
    for name in ("seg", "edge_bce", "attention", "dual_task"):
        assert first[name] > 0
        assert last[name] < 0.7 * first[name], (name, first[name], last[name])


# ----------------------------------------------------------------------------- distribution


def _split_batch():
    """4 images, unequal valid-pixel counts per replica (replica 0 gets most ignore pixels)."""
    rng = np.random.default_rng(12)
    image = rng.normal(size=(4, 16, 16, 3)).astype(np.float32)
    label = blobby_labels(rng, 4, 16, 16, k=3, ignore_frac=0.05)
    label[0, :10] = IGNORE
    label[1, :, :5] = IGNORE
    y_true = {"label": label, "boundary": boundary_map(label).numpy()}
    valid = (label != IGNORE).reshape(2, -1).sum(1)
    assert valid[0] < 0.8 * valid[1]
    return image, y_true


def test_mirrored_strategy_matches_single_device():
    strategy = cpu_mirrored_strategy(2)  # shared: see gscnn_tf/training/distribute.py
    assert strategy.num_replicas_in_sync == 2
    image, y_true = _split_batch()
    keras.utils.set_random_seed(1)
    with strategy.scope():
        model = _tiny_model(3, edge_bias=1.0)
        # Gradient comparison needs the deterministic estimator (the noise differs per replica).
        loss = GSCNNLoss(dual_task_seed=0, dual_task_gumbel_noise=False)

    def loss_and_grads(x, y):
        with tf.GradientTape() as tape:
            terms = loss.terms(y, model(x, training=True))
            total = loss.total(terms)
        return total, terms, tape.gradient(total, model.trainable_weights)

    def per_replica(ctx):
        i = ctx.replica_id_in_sync_group
        sl = slice(2 * i, 2 * i + 2)
        return image[sl], {k: v[sl] for k, v in y_true.items()}

    inputs = strategy.experimental_distribute_values_from_function(per_replica)

    @tf.function
    def distributed():
        total, terms, grads = strategy.run(lambda xy: loss_and_grads(*xy), args=(inputs,))
        red = lambda v: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)  # noqa: E731
        return red(total), {k: red(v) for k, v in terms.items()}, [red(g) for g in grads]

    d_total, d_terms, d_grads = distributed()
    s_total, s_terms, s_grads = loss_and_grads(image, tensors(y_true))

    out = model(image)
    assert 0 < (out["edge"].numpy() > 0.8).sum() < out["edge"].numpy().size  # attention term is active
    for name in s_terms:
        assert float(s_terms[name]) > 0, name
        np.testing.assert_allclose(d_terms[name].numpy(), s_terms[name].numpy(), rtol=2e-5, err_msg=name)
    np.testing.assert_allclose(d_total.numpy(), s_total.numpy(), rtol=2e-5)
    for dg, sg in zip(d_grads, s_grads):
        np.testing.assert_allclose(dg.numpy(), sg.numpy(), rtol=1e-4, atol=1e-6)
    # The naive per-replica mean (local counts, averaged) differs here, so the test can fail.
    naive = np.mean([np_seg_ce({"label": y_true["label"][s]}, {"seg_logits": out["seg_logits"].numpy()[s]})
                     for s in (slice(0, 2), slice(2, 4))])
    assert abs(naive - float(s_terms["seg"])) > 1e-3


class LossTrainer(keras.Model):
    """How the trainer is expected to use GSCNNLoss: Model.compute_loss returns its value."""

    def __init__(self, inner, gscnn_loss, **kwargs):
        super().__init__(**kwargs)
        self.inner = inner
        self.gscnn_loss = gscnn_loss

    def call(self, x, training=False):
        return self.inner(x, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return self.gscnn_loss(y, y_pred)


@pytest.mark.slow  # ~17 s on the shared CPUs (model.fit tracing under MirroredStrategy)
def test_keras_fit_under_mirrored_strategy_applies_the_global_gradient():
    """Keras' TF trainer sums replica gradients and does not rescale our scalar losses:
    one SGD(lr=1) step of model.fit moves the weights by exactly minus the single-device
    gradient of the global-batch loss, and logs the global loss value."""
    strategy = cpu_mirrored_strategy(2)  # shared: see gscnn_tf/training/distribute.py
    image, y_true = _split_batch()
    keras.utils.set_random_seed(2)
    with strategy.scope():
        inner = _tiny_model(3, edge_bias=1.0)
        loss = GSCNNLoss(dual_task_seed=0, dual_task_gumbel_noise=False)
        model = LossTrainer(inner, loss)
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), jit_compile=False)
    before = [w.numpy().copy() for w in inner.trainable_weights]
    with tf.GradientTape() as tape:
        total = loss(tensors(y_true), inner(image, training=True))
    grads = [g.numpy() for g in tape.gradient(total, inner.trainable_weights)]

    ds = tf.data.Dataset.from_tensor_slices((image, y_true)).batch(4)  # global batch 4 = 2 + 2
    history = model.fit(ds, epochs=1, verbose=0, shuffle=False)
    for w0, w1, g in zip(before, inner.trainable_weights, grads):
        np.testing.assert_allclose(w0 - w1.numpy(), g, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(history.history["loss"][0], float(total), rtol=1e-5)


def test_replicas_draw_independent_gumbel_noise():
    """Same inputs on both replicas: same forward value, different (noisy) gradients."""
    strategy = cpu_mirrored_strategy(2)  # shared: see gscnn_tf/training/distribute.py
    y_true, y_pred = make_batch(13, b=1, h=16, w=16)
    t, logits = tensors(y_true), tf.constant(y_pred["seg_logits"])
    with strategy.scope():
        loss = DualTaskLoss(seed=21)

    def fn():
        with tf.GradientTape() as tape:
            tape.watch(logits)
            value = loss(t, {"seg_logits": logits})
        return value, tape.gradient(value, logits)

    values, grads = tf.function(lambda: strategy.run(fn))()
    v0, v1 = [v.numpy() for v in strategy.experimental_local_results(values)]
    g0, g1 = [g.numpy() for g in strategy.experimental_local_results(grads)]
    assert v0 == pytest.approx(v1) and v0 > 0
    assert np.abs(g0).sum() > 0 and np.abs(g1).sum() > 0
    assert not np.allclose(g0, g1)
