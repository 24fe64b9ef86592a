"""The official Gated-SCNN checkpoint's tensor layout, and deterministic random weights in it.

Pure Python + NumPy (no TensorFlow, Keras or PyTorch), so that the golden-file tool, which
runs next to PyTorch, and the CI test, which runs without it, import the same code.

``official_state_dict_shapes(num_classes)`` lists every tensor of the official network's
``state_dict`` (WideResNet-38 A2 + shape stream + ASPP + decoder; keys without the
``module.`` prefix that ``torch.nn.DataParallel`` adds) with its PyTorch shape: conv kernels
are (out, in, kh, kw), BatchNorm tensors (C,), ``num_batches_tracked`` scalars.
``random_official_state_dict(seed)`` fills that layout from ``numpy.random.RandomState(seed)``
(a stream NumPy keeps stable across versions), which lets a test rebuild bit-identical
weights without PyTorch. See ``docs/OFFICIAL_CHECKPOINT.md``.
"""
from __future__ import annotations

import numpy as np

# WideResNet-38 A2 modules mod2..mod7: (blocks, widths). Same values as the Keras backbone
# (gscnn_tf.backbones.wider_resnet.WRN38_MODULES), restated here to stay free of Keras.
_WRN38 = (
    (3, (128, 128)),
    (3, (256, 256)),
    (6, (512, 512)),
    (3, (512, 1024)),
    (1, (512, 1024, 2048)),
    (1, (1024, 2048, 4096)),
)
_STRIDED_MODULE = 4  # mod4.block1 is the only strided block (proj_conv needed there)
_SHAPE_WIDTHS = (64, 32, 16, 8)
_ASPP_FILTERS = 256
_LOW_LEVEL_FILTERS = 48
_DECODER_FILTERS = 256
_NUM_ASPP_BRANCHES = 6  # image pooling, edge, 1x1, three atrous

# Keys present in the official state_dict that the inference never uses; the converter drops
# them (``dsn1`` is built but unused; ``criterion`` holds the class weights of a training loss).
UNUSED_PREFIXES = ("dsn1.", "criterion.")
UNUSED_SUFFIXES = (".num_batches_tracked",)
BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def is_unused_key(key: str) -> bool:
    """True for the official keys that carry nothing the inference uses (dropped on import)."""
    return key.startswith(UNUSED_PREFIXES) or key.endswith(UNUSED_SUFFIXES)


def _bn(out, prefix, channels):
    for suffix in BN_SUFFIXES:
        out[f"{prefix}.{suffix}"] = () if suffix == "num_batches_tracked" else (channels,)


def _conv(out, prefix, c_out, c_in, k, bias=False):
    out[f"{prefix}.weight"] = (c_out, c_in, k, k)
    if bias:
        out[f"{prefix}.bias"] = (c_out,)


def official_state_dict_shapes(num_classes: int = 19) -> dict:
    """Ordered ``{key: shape}`` of the official network's state_dict (no ``module.`` prefix)."""
    out: dict = {}
    _conv(out, "mod1.conv1", 64, 3, 3)
    in_ch = 64
    for module, (blocks, widths) in enumerate(_WRN38, start=2):
        for b in range(1, blocks + 1):
            p = f"mod{module}.block{b}"
            stride = 2 if (module == _STRIDED_MODULE and b == 1) else 1
            _bn(out, f"{p}.bn1.0", in_ch)
            if len(widths) == 2:
                _conv(out, f"{p}.convs.conv1", widths[0], in_ch, 3)
                _bn(out, f"{p}.convs.bn2.0", widths[0])
                _conv(out, f"{p}.convs.conv2", widths[1], widths[0], 3)
            else:
                _conv(out, f"{p}.convs.conv1", widths[0], in_ch, 1)
                _bn(out, f"{p}.convs.bn2.0", widths[0])
                _conv(out, f"{p}.convs.conv2", widths[1], widths[0], 3)
                _bn(out, f"{p}.convs.bn3.0", widths[1])
                _conv(out, f"{p}.convs.conv3", widths[2], widths[1], 1)
            if stride != 1 or in_ch != widths[-1]:
                _conv(out, f"{p}.proj_conv", widths[-1], in_ch, 1)
            in_ch = widths[-1]
    taps = {"dsn1": 64, "dsn3": 256, "dsn4": 512, "dsn7": 4096}
    for name, channels in taps.items():
        _conv(out, name, 1, channels, 1, bias=True)
    w0, w1, w2, w3 = _SHAPE_WIDTHS
    for i, (c_in, c_out) in enumerate([(w0, w1), (w1, w2), (w2, w3)], start=1):
        _conv(out, f"res{i}.conv1", c_in, c_in, 3)
        _bn(out, f"res{i}.bn1", c_in)
        _conv(out, f"res{i}.conv2", c_in, c_in, 3)
        _bn(out, f"res{i}.bn2", c_in)
        _conv(out, f"d{i}", c_out, c_in, 1, bias=True)
        g = f"gate{i}"
        _bn(out, f"{g}._gate_conv.0", c_out + 1)
        _conv(out, f"{g}._gate_conv.1", c_out + 1, c_out + 1, 1, bias=True)
        _conv(out, f"{g}._gate_conv.3", 1, c_out + 1, 1, bias=True)
        _bn(out, f"{g}._gate_conv.4", 1)
        out[f"{g}.weight"] = (c_out, c_out, 1, 1)
    _conv(out, "fuse", 1, w3, 1)
    _conv(out, "cw", 1, 2, 1)
    a = _ASPP_FILTERS
    _conv(out, "aspp.img_conv.0", a, 4096, 1)
    _bn(out, "aspp.img_conv.1", a)
    _conv(out, "aspp.edge_conv.0", a, 1, 1)
    _bn(out, "aspp.edge_conv.1", a)
    for j, k in enumerate((1, 3, 3, 3)):
        _conv(out, f"aspp.features.{j}.0", a, 4096, k)
        _bn(out, f"aspp.features.{j}.1", a)
    _conv(out, "bot_aspp", a, _NUM_ASPP_BRANCHES * a, 1)
    _conv(out, "bot_fine", _LOW_LEVEL_FILTERS, 128, 1)
    d = _DECODER_FILTERS
    _conv(out, "final_seg.0", d, _LOW_LEVEL_FILTERS + a, 3)
    _bn(out, "final_seg.1", d)
    _conv(out, "final_seg.3", d, d, 3)
    _bn(out, "final_seg.4", d)
    _conv(out, "final_seg.6", num_classes, d, 1)
    return out


def random_official_state_dict(seed: int = 0, num_classes: int = 19) -> dict:
    """Deterministic random weights in the official layout: ``{key: np.ndarray}``.

    Drawn key by key, in ``official_state_dict_shapes`` order, from one
    ``np.random.RandomState(seed)`` (float64 draws cast to float32):

    - conv kernels: normal, std ``sqrt(1 / fan_in)`` (activations stay O(1) through the
      residual sums); conv biases: normal, std 0.1;
    - BatchNorm: weight U(0.5, 1.5), bias N(0, 0.1), running_mean N(0, 0.1),
      running_var U(0.5, 1.5) (random statistics, so that a wrong mean/variance mapping shows);
    - ``num_batches_tracked``: int64 0.

    Same seed -> bit-identical arrays on every platform and NumPy version.
    """
    rng = np.random.RandomState(seed)
    out = {}
    for key, shape in official_state_dict_shapes(num_classes).items():
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "num_batches_tracked":
            out[key] = np.array(0, dtype=np.int64)
            continue
        if len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            value = rng.standard_normal(shape) * np.sqrt(1.0 / fan_in)
        elif leaf in ("weight", "running_var"):  # 1-D weights are BatchNorm scales
            value = rng.uniform(0.5, 1.5, shape)
        else:  # conv and BN biases, running means
            value = rng.standard_normal(shape) * 0.1
        out[key] = value.astype(np.float32)
    return out

