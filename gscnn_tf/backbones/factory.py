"""Builds a regular-stream backbone by name, with its input normalisation and pretrained weights.

``build_backbone(name, output_stride)`` returns a ``keras.Model`` mapping a normalised RGB
image (B, H, W, 3) to a dict of feature maps ``stem`` (stride 2), ``c2`` (4), ``c3`` (8),
``c4`` (16, or 8 at OS8) and ``c5`` (= output_stride). WideResNet-38 (``"wrn38"``, the
official model's backbone, OS8 only) is the exception: ``stem`` stride 1, ``c2`` 2, ``c3`` 4,
``c4`` and ``c5`` 8. ``normalization_for(name)`` gives the matching input normalisation
``x = (rgb_0_255 - mean) / std``.

Pretrained weights come from the ``keras.applications`` model of the same architecture
(ImageNet, or a weights file saved from such a model) and are copied layer by layer by
name, since our dilated models keep keras.applications' layer names.
"""
from __future__ import annotations

import logging
import os
import warnings

from gscnn_tf.backbones import mobilenet_v2, resnet, wider_resnet

logger = logging.getLogger(__name__)

BACKBONES = ("resnet50", "resnet101", "mobilenetv2", "wrn38")
OUTPUT_STRIDES = (8, 16, 32)

# Keras' ResNet ImageNet weights are Caffe-style: BGR mean subtraction, no scaling. Here
# the means are listed in RGB order because conv1's kernel is flipped to RGB on load.
_NORMALIZATION = {
    "resnet50": ((123.68, 116.779, 103.939), (1.0, 1.0, 1.0)),
    "resnet101": ((123.68, 116.779, 103.939), (1.0, 1.0, 1.0)),
    "mobilenetv2": ((127.5, 127.5, 127.5), (127.5, 127.5, 127.5)),
    # torchvision's ImageNet mean/std (0..1 units) times 255, as the official Gated-SCNN loader.
    "wrn38": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
}

# Layers of the keras.applications model that our feature extractor does not build.
_UNUSED_SOURCE_LAYERS = {"mobilenetv2": {"Conv_1", "Conv_1_bn"}}
# First conv whose kernel input channels are flipped BGR -> RGB on load.
_BGR_FIRST_CONV = {"resnet50": "conv1_conv", "resnet101": "conv1_conv"}


def _check_name(name):
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}; expected one of {list(BACKBONES)}.")


def normalization_for(name):
    """Returns ``(mean, std)``, RGB 3-tuples in 0..255 units, for backbone ``name``."""
    _check_name(name)
    mean, std = _NORMALIZATION[name]
    return tuple(mean), tuple(std)


def build_backbone(name, output_stride=8, pretrained=None, alpha=1.0, sync_batchnorm="auto"):
    """Builds a dilated backbone feature extractor.

    Args:
        name: ``"resnet50"``, ``"resnet101"``, ``"mobilenetv2"`` or ``"wrn38"``.
        output_stride: 8 (paper: c4, c5 at stride 8, dilations 2 and 4), 16 (c5 at stride 16,
            dilation 2) or 32 (undilated, as keras.applications). ``wrn38``: 8 only.
        pretrained: ``None`` (random init), ``"imagenet"`` (downloads through
            keras.applications when not cached), or a path to a weights file of the matching
            ``keras.applications`` model (``include_top=False``; ``.weights.h5`` or legacy
            ``.h5``).
        alpha: MobileNetV2 width multiplier (ignored for ResNets).
        sync_batchnorm: ``"auto"`` | True | False, see ``gscnn_tf.layers.normalization``.

    Returns:
        ``keras.Model`` with input (None, None, None, 3) float32 normalised RGB and outputs
        ``{"stem", "c2", "c3", "c4", "c5"}``, each (B, h, w, C) (see the module docstrings
        of ``resnet``, ``mobilenet_v2`` and ``wider_resnet`` for channels).

    Raises:
        ValueError: unknown name or output stride, or a weights file of another architecture.
        FileNotFoundError: ``pretrained`` is a path that does not exist.
    """
    _check_name(name)
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {list(OUTPUT_STRIDES)}, got {output_stride!r}.")
    if pretrained is not None and pretrained != "imagenet":
        pretrained = os.fspath(pretrained)
        if not os.path.isfile(pretrained):
            raise FileNotFoundError(f"Backbone weights file not found: {pretrained!r}")
    if name == "wrn38":
        if pretrained is not None:
            raise ValueError(
                "wrn38 has no keras.applications weights; import the official Gated-SCNN checkpoint with "
                "import_official_checkpoint.py instead (model.pretrained must be null)."
            )
        return wider_resnet.build_wider_resnet38(output_stride, sync_batchnorm=sync_batchnorm)
    # Load the weight source first, so a bad file fails before the (slow) model build.
    source = None if pretrained is None else _load_source(name, pretrained, alpha)
    if name == "mobilenetv2":
        model = mobilenet_v2.build_mobilenet_v2(output_stride, alpha=alpha, sync_batchnorm=sync_batchnorm)
    else:
        model = resnet.build_resnet(name, output_stride, sync_batchnorm=sync_batchnorm)
    if source is not None:
        _copy_weights(source, model, name, _source_label(pretrained))
    return model


def _source_model(name, weights, alpha):
    if name == "mobilenetv2":
        return mobilenet_v2.keras_application(weights, alpha=alpha)
    return resnet.keras_application(name, weights)


def _source_label(pretrained):
    return "ImageNet weights" if pretrained == "imagenet" else repr(pretrained)


def _load_source(name, pretrained, alpha):
    """The keras.applications model holding the weights to transfer."""
    if pretrained == "imagenet":
        return _source_model(name, "imagenet", alpha)
    source = _source_model(name, None, alpha)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            source.load_weights(pretrained)
        except Exception as err:  # Keras raises assorted types for foreign/corrupt files
            raise ValueError(
                f"Cannot load {pretrained!r} as keras.applications {name} (alpha={alpha}) weights: {err}"
            ) from err
    # Keras only warns when parts of the model find nothing in the file; that is a wrong file too.
    skipped = [str(w.message) for w in caught if "Skipping" in str(w.message)]
    if skipped:
        raise ValueError(f"{pretrained!r} does not hold all keras.applications {name} weights: {skipped[0]}")
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return source


def load_pretrained(model, name, pretrained, alpha=1.0):
    """Copies keras.applications weights into ``model`` (built by ``build_backbone``) by name.

    ``pretrained`` is ``"imagenet"`` or a weights-file path of the matching keras.applications
    model. For ResNets, ``conv1_conv``'s kernel is flipped BGR -> RGB on its input-channel axis.
    Raises ``ValueError`` naming the file when it does not fit the architecture.
    """
    if name == "wrn38":
        raise ValueError("wrn38 has no keras.applications weights; use import_official_checkpoint.py instead.")
    if pretrained != "imagenet" and not os.path.isfile(os.fspath(pretrained)):
        raise FileNotFoundError(f"Backbone weights file not found: {os.fspath(pretrained)!r}")
    return _copy_weights(_load_source(name, pretrained, alpha), model, name, _source_label(pretrained))


def _copy_weights(source, model, name, source_label):
    source_layers = {layer.name: layer for layer in source.layers if layer.weights}
    copied = set()
    for layer in model.layers:
        if not layer.weights:
            continue
        src = source_layers.get(layer.name)
        if src is None:
            raise ValueError(f"{source_label}: no layer {layer.name!r} in keras.applications {name}.")
        weights = src.get_weights()
        if layer.name == _BGR_FIRST_CONV.get(name):
            weights[0] = weights[0][:, :, ::-1, :]  # kernel (kh, kw, in, out): BGR -> RGB inputs
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [tuple(w.shape) for w in weights] != expected:
            raise ValueError(
                f"{source_label}: layer {layer.name!r} has weight shapes {[w.shape for w in weights]}, "
                f"expected {expected} (wrong alpha or architecture?)."
            )
        layer.set_weights(weights)
        copied.add(layer.name)
    leftover = set(source_layers) - copied - _UNUSED_SOURCE_LAYERS.get(name, set())
    if leftover:
        raise ValueError(f"{source_label}: layers {sorted(leftover)[:5]} have no counterpart in {model.name}.")
    logger.info("Loaded %s into %s (%d layers).", source_label, model.name, len(copied))
    return model


def count_params(name, output_stride=8, alpha=1.0):
    """Number of parameters (trainable + BN statistics) of a backbone."""
    return build_backbone(name, output_stride, alpha=alpha).count_params()


__all__ = ["BACKBONES", "OUTPUT_STRIDES", "build_backbone", "count_params", "load_pretrained", "normalization_for"]
