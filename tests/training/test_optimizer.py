"""The optimizer and schedule match the official (PyTorch) recipe, computed independently in NumPy."""
import numpy as np
import pytest

from gscnn_tf.config import TrainConfig
from gscnn_tf.training.optimizer import CoupledWeightDecaySGD, build_optimizer, poly_schedule


def torch_sgd_reference(w0, grads, lr, momentum, wd):
    """torch.optim.SGD semantics: d = g + wd*w; buf = momentum*buf + d (buf = d at step 0); w -= lr*buf."""
    w, buf = w0.copy(), None
    for g in grads:
        d = g + wd * w
        buf = d.copy() if buf is None else momentum * buf + d
        w = w - lr * buf
    return w


def test_coupled_weight_decay_matches_torch_sgd():
    import keras

    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(4, 3)).astype(np.float32)
    grads = [rng.normal(size=(4, 3)).astype(np.float32) for _ in range(5)]
    var = keras.Variable(w0)
    opt = CoupledWeightDecaySGD(learning_rate=0.1, momentum=0.9, l2_weight_decay=0.05)
    for g in grads:
        opt.apply_gradients([(keras.ops.convert_to_tensor(g), var)])
    # Keras' momentum buffer starts at 0 (buf = 0.9*0 + d), identical to torch's buf = d at step 0.
    expected = torch_sgd_reference(w0, grads, 0.1, 0.9, 0.05)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(var), expected, rtol=1e-5, atol=1e-6)
    # ... and differs from Keras' decoupled decay, which is why the subclass exists.
    var2 = keras.Variable(w0)
    decoupled = keras.optimizers.SGD(learning_rate=0.1, momentum=0.9, weight_decay=0.05)
    for g in grads:
        decoupled.apply_gradients([(keras.ops.convert_to_tensor(g), var2)])
    assert np.abs(keras.ops.convert_to_numpy(var2) - expected).max() > 1e-3


def test_optimizer_config_round_trip():
    opt = CoupledWeightDecaySGD(learning_rate=0.01, momentum=0.9, l2_weight_decay=1e-4)
    clone = CoupledWeightDecaySGD.from_config(opt.get_config())
    assert clone.l2_weight_decay == pytest.approx(1e-4) and clone.momentum == pytest.approx(0.9)


@pytest.mark.parametrize("power", [1.0, 0.9])
def test_poly_schedule_per_step(power):
    schedule = poly_schedule(0.01, total_steps=100, power=power)
    for step in (0, 1, 50, 99, 100, 150):
        expected = 0.01 * (1 - min(step, 100) / 100) ** power
        assert float(schedule(step)) == pytest.approx(expected, abs=1e-9)


def test_build_optimizer_rejects_unknown():
    cfg = TrainConfig(optimizer="adam")
    with pytest.raises(ValueError, match="only 'sgd'"):
        build_optimizer(cfg, 10)
