"""The private Keras/TF hooks GatedSCNN relies on, checked by name.

``GatedSCNN`` overrides Keras' ``_maybe_symbolic_build`` (fit() pulls and reduces a
batch there to build the model, which breaks MultiWorkerMirroredStrategy and skips a batch)
and calls ``strategy.extended._in_multi_worker_mode()`` (Keras reduces multi-worker logs on
axis 0); the inference checkpoints pass ``objects_to_skip`` through ``keras.saving.save_weights``
to leave the optimizer out. Nothing public does these jobs. If a Keras or TensorFlow upgrade renames or stops
calling them, the override silently does nothing: these tests fail first, naming the hook.
"""
import numpy as np
import pytest


def test_keras_fit_still_calls_maybe_symbolic_build():
    import keras

    calls = []

    class Spy(keras.Model):
        def _maybe_symbolic_build(self, iterator=None, data_batch=None):
            calls.append(iterator is not None or data_batch is not None)
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    inputs = keras.Input((4,))
    model = Spy(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.zeros((2, 4), np.float32), np.zeros((2, 1), np.float32), epochs=1, verbose=0)
    assert calls, (
        "Keras' fit() no longer calls Model._maybe_symbolic_build: GatedSCNN's override "
        "(gscnn_tf/model.py) is dead code; check whether fit() still consumes a batch "
        "to build the model and how MultiWorkerMirroredStrategy copes")
    assert calls[0], (
        "Keras' fit() calls Model._maybe_symbolic_build without the data iterator or a batch: "
        "GatedSCNN's override (which must stop Keras pulling a batch from it) no longer sees the data")


def test_gated_scnn_overrides_the_hook_keras_defines():
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    from gscnn_tf.model import GatedSCNN

    assert hasattr(TensorFlowTrainer, "_maybe_symbolic_build"), (
        "Keras' TensorFlowTrainer has no _maybe_symbolic_build any more: GatedSCNN's override is dead")
    assert GatedSCNN._maybe_symbolic_build is not TensorFlowTrainer._maybe_symbolic_build


def test_multi_worker_strategy_still_has_in_multi_worker_mode():
    from tensorflow.python.distribute.collective_all_reduce_strategy import CollectiveAllReduceExtended

    assert callable(getattr(CollectiveAllReduceExtended, "_in_multi_worker_mode", None)), (
        "MultiWorkerMirroredStrategy.extended._in_multi_worker_mode is gone: "
        "gscnn_tf.model._in_multi_worker_mode must find another way to tell multi-worker runs")


def test_save_weights_still_takes_objects_to_skip(tmp_path):
    import h5py
    import keras

    from gscnn_tf.training.callbacks import save_weights_atomic

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer=keras.optimizers.SGD(momentum=0.9), loss="mse")
    model.fit(np.zeros((2, 4), np.float32), np.zeros((2, 1), np.float32), epochs=1, verbose=0)
    full, inference = str(tmp_path / "full.weights.h5"), str(tmp_path / "inference.weights.h5")
    model.save_weights(full)
    with h5py.File(full) as f:
        assert "optimizer" in f  # what the backups keep
    try:
        save_weights_atomic(model, inference)
    except TypeError as exc:
        pytest.fail(f"keras.saving.save_weights no longer passes objects_to_skip to saving_lib ({exc}): "
                    "gscnn_tf/training/callbacks.save_weights_atomic must leave the optimizer out another way")
    with h5py.File(inference) as f:
        assert "optimizer" not in f and "layers" in f, (
            "objects_to_skip no longer leaves the optimizer out of keras.saving.save_weights' file")
