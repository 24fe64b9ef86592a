"""The two private Keras/TF hooks the trainer relies on, checked by name.

``GSCNNTrainer`` overrides Keras' ``_maybe_symbolic_build`` (fit() pulls and reduces a
batch there to build the model, which breaks MultiWorkerMirroredStrategy and skips a batch)
and calls ``strategy.extended._in_multi_worker_mode()`` (Keras reduces multi-worker logs on
axis 0). Nothing public does either job. If a Keras or TensorFlow upgrade renames or stops
calling them, the override silently does nothing: these tests fail first, naming the hook.
"""
import numpy as np


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
        "Keras' fit() no longer calls Model._maybe_symbolic_build: GSCNNTrainer's override "
        "(gscnn_tf/training/trainer.py) is dead code; check whether fit() still consumes a batch "
        "to build the model and how MultiWorkerMirroredStrategy copes")


def test_gscnn_trainer_overrides_the_hook_keras_defines():
    from keras.src.backend.tensorflow.trainer import TensorFlowTrainer

    from gscnn_tf.training.trainer import GSCNNTrainer

    assert hasattr(TensorFlowTrainer, "_maybe_symbolic_build"), (
        "Keras' TensorFlowTrainer has no _maybe_symbolic_build any more: GSCNNTrainer's override is dead")
    assert GSCNNTrainer._maybe_symbolic_build is not TensorFlowTrainer._maybe_symbolic_build


def test_multi_worker_strategy_still_has_in_multi_worker_mode():
    from tensorflow.python.distribute.collective_all_reduce_strategy import CollectiveAllReduceExtended

    assert callable(getattr(CollectiveAllReduceExtended, "_in_multi_worker_mode", None)), (
        "MultiWorkerMirroredStrategy.extended._in_multi_worker_mode is gone: "
        "gscnn_tf.training.trainer._in_multi_worker_mode must find another way to tell multi-worker runs")
