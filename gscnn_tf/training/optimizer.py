"""SGD with the paper's L2 weight decay and the per-step poly learning-rate schedule.

Keras' ``SGD(weight_decay=...)`` is *decoupled* decay (w -= lr * wd * w, outside momentum).
The official code uses PyTorch's SGD, whose weight decay is *coupled*: ``wd * w`` is added
to the gradient before the momentum update. With momentum 0.9 the two differ, so we
reproduce PyTorch's semantics here.
"""
from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="gscnn_tf")
class CoupledWeightDecaySGD(keras.optimizers.SGD):
    """SGD (momentum, optional Nesterov) whose L2 decay enters the gradient, as torch.optim.SGD.

    Args:
        l2_weight_decay: coefficient added as ``l2_weight_decay * variable`` to every gradient.
        Other arguments as ``keras.optimizers.SGD`` (its own decoupled ``weight_decay`` is left unset).
    """

    def __init__(self, learning_rate=0.01, momentum=0.9, nesterov=False, l2_weight_decay=1e-4, **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov, **kwargs)
        self.l2_weight_decay = float(l2_weight_decay)

    def update_step(self, gradient, variable, learning_rate):
        if self.l2_weight_decay:
            gradient = ops.add(gradient, ops.multiply(ops.cast(self.l2_weight_decay, variable.dtype), variable))
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config["l2_weight_decay"] = self.l2_weight_decay
        return config


def poly_schedule(base_learning_rate: float, total_steps: int, power: float = 1.0):
    """lr(step) = base * (1 - step / total_steps) ** power, evaluated every step (official recipe)."""
    return keras.optimizers.schedules.PolynomialDecay(
        initial_learning_rate=base_learning_rate,
        decay_steps=max(1, int(total_steps)),
        end_learning_rate=0.0,
        power=power,
    )


def build_optimizer(train_config, total_steps: int):
    if train_config.optimizer != "sgd":
        raise ValueError(f"train.optimizer={train_config.optimizer!r}: only 'sgd' (the paper's) is supported")
    schedule = poly_schedule(train_config.learning_rate, total_steps, train_config.poly_power)
    return CoupledWeightDecaySGD(
        learning_rate=schedule, momentum=train_config.momentum, l2_weight_decay=train_config.weight_decay
    )
