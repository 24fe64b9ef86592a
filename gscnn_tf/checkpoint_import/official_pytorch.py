"""The official PyTorch Gated-SCNN checkpoint -> a :class:`gscnn_tf.model.GatedSCNN`.

Two parts (see ``docs/OFFICIAL_CHECKPOINT.md``):

- ``load_official_state_dict(model, state_dict)``: maps a ``{key: np.ndarray}`` state_dict of
  the official network onto a model built with ``backbone="wrn38"`` and
  ``official_compat=True``, strictly: every key is either mapped (and must have the right
  shape) or on the short list of unused keys (``*.num_batches_tracked``, ``dsn1.*``,
  ``criterion.*``); anything missing, unexpected or of the wrong shape raises
  ``OfficialCheckpointError`` naming the keys, before any weight is assigned. NumPy only.
- ``read_official_checkpoint(path)``: reads the ``.pth`` container (PyTorch needed, the
  optional ``convert`` extra) or a ``.npz`` of the same tensors, into such a dict.

Transforms: conv kernels (out, in, kh, kw) -> (kh, kw, in, out); BatchNorm weight, bias,
running_mean, running_var -> gamma, beta, moving_mean, moving_variance (epsilon 1e-5 on both
sides). ``cw`` (the edge/Canny fusion conv) also has its Canny input column multiplied by
255: the official Canny map is 0/255, ours 0/1.
"""
from __future__ import annotations

import os
import pickle

import numpy as np

from gscnn_tf.checkpoint_import.official_layout import is_unused_key

DATA_PARALLEL_PREFIX = "module."
# Scale of the official Canny map (cv2.Canny returns 0/255) relative to CannyEdges' 0/1.
OFFICIAL_CANNY_SCALE = 255.0


class OfficialCheckpointError(ValueError):
    """The official checkpoint cannot be read or does not fit the model (message says why)."""


# ----------------------------------------------------------------------------- mapping


def _conv(prefix, layer, transform="conv"):
    plan = {f"{prefix}.weight": (layer.kernel, transform)}
    if layer.use_bias:
        plan[f"{prefix}.bias"] = (layer.bias, "copy")
    return plan


def _bn(prefix, layer):
    return {
        f"{prefix}.weight": (layer.gamma, "copy"),
        f"{prefix}.bias": (layer.beta, "copy"),
        f"{prefix}.running_mean": (layer.moving_mean, "copy"),
        f"{prefix}.running_var": (layer.moving_variance, "copy"),
    }


def _conv_bn(prefix_conv, prefix_bn, sequential):
    conv, bn = sequential.get_layer("conv"), sequential.get_layer("bn")
    return {**_conv(prefix_conv, conv), **_bn(prefix_bn, bn)}


def check_official_model(model) -> None:
    """Raises ``OfficialCheckpointError`` unless ``model`` has the official architecture."""
    names = {layer.name for layer in model.layers}
    needed = {"wrn38_os8", "shape_stream", "aspp", "decoder", "canny"}
    if not needed <= names:
        raise OfficialCheckpointError(
            f"model {model.name!r} is not the official Gated-SCNN layout (missing {sorted(needed - names)}); "
            "build it with model.backbone=wrn38, shape_stream/gated/canny true (configs/cityscapes_wrn38_official.yaml)."
        )
    aspp, decoder = model.get_layer("aspp"), model.get_layer("decoder")
    if aspp.project_norm_act or decoder.low_level_norm_act or decoder.classifier_bias:
        raise OfficialCheckpointError("the model was built without model.official_compat=true; the official weights need it.")
    if model.get_layer("canny").input_mode != "official_uint8_wrap" or not model.get_layer("shape_stream").gated:
        raise OfficialCheckpointError("the model needs model.official_compat=true and model.gated=true for the official weights.")


def conversion_plan(model) -> dict:
    """``{official key: (keras variable, transform)}`` for every weight of the official model.

    ``transform`` is ``"copy"``, ``"conv"`` (transpose to HWIO) or ``"canny_fuse"`` (conv,
    then the Canny input column x 255).
    """
    check_official_model(model)
    plan = {}
    backbone = model.get_layer("wrn38_os8")
    for layer in backbone.layers:
        if not layer.weights:
            continue
        name = layer.name
        if name == "mod1_conv1":
            plan.update(_conv("mod1.conv1", layer))
            continue
        module, block, part = name.split("_", 2)  # e.g. mod4, block1, conv1 / bn2 / proj_conv
        prefix = f"{module}.{block}"
        if part == "bn1":
            plan.update(_bn(f"{prefix}.bn1.0", layer))
        elif part.startswith("bn"):
            plan.update(_bn(f"{prefix}.convs.{part}.0", layer))
        elif part == "proj_conv":
            plan.update(_conv(f"{prefix}.proj_conv", layer))
        else:
            plan.update(_conv(f"{prefix}.convs.{part}", layer))

    stream = model.get_layer("shape_stream")
    for i in range(3):
        res, n = stream.res_blocks[i], i + 1
        plan.update(_conv(f"res{n}.conv1", res.conv1))
        plan.update(_bn(f"res{n}.bn1", res.bn1))
        plan.update(_conv(f"res{n}.conv2", res.conv2))
        plan.update(_bn(f"res{n}.bn2", res.bn2))
        plan.update(_conv(f"d{n}", stream.reducers[i]))
        gate = stream.gates[i]
        plan.update(_bn(f"gate{n}._gate_conv.0", gate.input_bn))
        plan.update(_conv(f"gate{n}._gate_conv.1", gate.attention_hidden))
        plan.update(_conv(f"gate{n}._gate_conv.3", gate.attention_out))
        plan.update(_bn(f"gate{n}._gate_conv.4", gate.attention_bn))
        plan.update(_conv(f"gate{n}", gate.output_conv))
    for dsn, projection in zip(("dsn3", "dsn4", "dsn7"), stream.gate_projections):
        plan.update(_conv(dsn, projection))
    plan.update(_conv("fuse", stream.edge_logit))
    plan.update(_conv("cw", stream.canny_fuse, transform="canny_fuse"))

    aspp = model.get_layer("aspp")
    plan.update(_conv_bn("aspp.img_conv.0", "aspp.img_conv.1", aspp.pool_branch))
    plan.update(_conv_bn("aspp.edge_conv.0", "aspp.edge_conv.1", aspp.shape_branch))
    plan.update(_conv_bn("aspp.features.0.0", "aspp.features.0.1", aspp.conv1x1_branch))
    for j, atrous in enumerate(aspp.atrous_branches, start=1):
        plan.update(_conv_bn(f"aspp.features.{j}.0", f"aspp.features.{j}.1", atrous))
    plan.update(_conv("bot_aspp", aspp.project))

    decoder = model.get_layer("decoder")
    plan.update(_conv("bot_fine", decoder.low_level))
    plan.update(_conv_bn("final_seg.0", "final_seg.1", decoder.refine1))
    plan.update(_conv_bn("final_seg.3", "final_seg.4", decoder.refine2))
    plan.update(_conv("final_seg.6", decoder.classifier))
    # Every model weight must receive a tensor (an unmapped one would keep its random init).
    mapped = {id(variable) for variable, _ in plan.values()}
    unmapped = [w.path for w in model.weights if id(w) not in mapped]
    if unmapped:
        raise OfficialCheckpointError(f"model weights with no official counterpart: {unmapped[:5]}")
    return plan


def strip_data_parallel_prefix(state_dict: dict) -> dict:
    """Removes the ``module.`` that ``torch.nn.DataParallel`` puts before every key."""
    return {k[len(DATA_PARALLEL_PREFIX):] if k.startswith(DATA_PARALLEL_PREFIX) else k: v for k, v in state_dict.items()}


def _transform(value, transform):
    if transform == "copy":
        return value
    kernel = np.transpose(value, (2, 3, 1, 0))  # (out, in, kh, kw) -> (kh, kw, in, out)
    if transform == "canny_fuse":
        kernel = kernel.copy()
        kernel[:, :, 1, :] *= OFFICIAL_CANNY_SCALE  # input channels: [edge, canny]
    return kernel


def _expected_source_shape(variable_shape, transform):
    if transform == "copy":
        return tuple(variable_shape)
    kh, kw, c_in, c_out = variable_shape
    return (c_out, c_in, kh, kw)


def _preview(keys, limit=8):
    keys = sorted(keys)
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(repr(k) for k in keys[:limit]) + more


def load_official_state_dict(model, state_dict: dict, source: str = "checkpoint") -> dict:
    """Assigns an official state_dict to ``model`` (strict; nothing assigned on error).

    Args:
        model: ``GatedSCNN`` with ``backbone="wrn38"``, ``official_compat=True``.
        state_dict: ``{key: array}``, keys with or without the ``module.`` prefix.
        source: name used in error messages (the file).

    Returns:
        A summary dict: ``mapped`` (number of tensors assigned), ``dropped`` (sorted keys
        ignored as unused).

    Raises:
        OfficialCheckpointError: missing, unexpected or wrong-shaped keys (all named), or
        tensors that are not floating point.
    """
    plan = conversion_plan(model)
    tensors = strip_data_parallel_prefix(state_dict)
    dropped = sorted(k for k in tensors if k not in plan and is_unused_key(k))
    unexpected = [k for k in tensors if k not in plan and not is_unused_key(k)]
    missing = [k for k in plan if k not in tensors]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_preview(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_preview(unexpected)}")
    values = {}
    wrong = []
    for key, (variable, transform) in plan.items():
        if key not in tensors:
            continue
        value = np.asarray(tensors[key])
        expected = _expected_source_shape(variable.shape, transform)
        if tuple(value.shape) != expected:
            wrong.append(f"{key!r} has shape {tuple(value.shape)}, expected {expected}")
            continue
        if not np.issubdtype(value.dtype, np.floating):
            wrong.append(f"{key!r} has dtype {value.dtype}, expected floating point")
            continue
        values[key] = _transform(value.astype(np.float32, copy=False), transform)
    if wrong:
        problems.append("wrong tensor(s): " + "; ".join(wrong[:8]) + (f" and {len(wrong) - 8} more" if len(wrong) > 8 else ""))
    if problems:
        raise OfficialCheckpointError(
            f"{source}: not the official Gated-SCNN (WideResNet-38, {model.get_layer('decoder').num_classes} classes) "
            "state_dict: " + " | ".join(problems)
        )
    for key, (variable, _) in plan.items():
        variable.assign(values[key])
    return {"mapped": len(plan), "dropped": dropped}


# ----------------------------------------------------------------------------- reading


def _numpy_safe_globals():
    """Objects a safe (weights_only) ``torch.load`` may rebuild: NumPy scalars and dtypes.

    The official checkpoint stores its validation mIoU as a ``numpy.float64``; pickles written
    with NumPy 1.x name the scalar constructor ``numpy.core.multiarray.scalar``, NumPy 2 moved
    it to ``numpy._core``.
    """
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import scalar
    allowed = [scalar, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype]
    allowed += [type(np.dtype(code)) for code in ("f8", "f4", "f2", "i8", "i4", "u1", "b1")]
    return allowed


def _import_torch():
    try:
        import torch
    except ImportError as err:
        raise OfficialCheckpointError(
            "reading a .pth checkpoint needs PyTorch, which is not installed: pip install -e '.[convert]' "
            "(or pip install torch, CPU build is enough)"
        ) from err
    return torch


def _torch_load(path: str, trust: bool):
    torch = _import_torch()
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust:
            raise OfficialCheckpointError(
                f"{path}: holds Python objects that a safe load refuses ({str(err).splitlines()[0]}). If you trust "
                "where the file comes from, re-run with --trust-checkpoint (this unpickles it and can run code)."
            ) from err
    except Exception as err:  # noqa: BLE001 - corrupt files make the unpickler raise assorted types
        raise OfficialCheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - arbitrary pickles raise anything
        raise OfficialCheckpointError(f"{path}: not a readable PyTorch checkpoint ({err})") from err


def _to_numpy(path, key, value):
    if hasattr(value, "detach"):  # torch.Tensor
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":  # NumPy has no bfloat16
            value = value.float()
        return value.numpy()
    if isinstance(value, np.ndarray):
        return value
    raise OfficialCheckpointError(f"{path}: state_dict entry {key!r} is a {type(value).__name__}, not a tensor")


def _container_state_dict(path, obj):
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        meta = {k: v for k, v in obj.items() if k in ("epoch", "mean_iu", "command")}
        return obj["state_dict"], meta
    if isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj):
        return obj, {}
    raise OfficialCheckpointError(
        f"{path}: expected a dict with a 'state_dict' entry (the official training snapshot) or a bare "
        f"state_dict, got {type(obj).__name__}"
    )


def read_official_checkpoint(path: str, trust: bool = False) -> tuple:
    """Reads the official checkpoint; returns ``(state_dict, meta)``.

    ``path``: the official ``.pth`` snapshot (``{'state_dict', 'optimizer', 'epoch', 'mean_iu',
    'command'}``, PyTorch's zip or legacy format, possibly saved from CUDA tensors), a bare
    state_dict saved with ``torch.save``, or a ``.npz`` of the state_dict's tensors (no
    PyTorch needed). ``.pth`` files are loaded with ``weights_only=True`` plus NumPy scalars;
    ``trust=True`` falls back to a full unpickling when that refuses the file.

    Returns:
        ``state_dict``: ``{key: np.ndarray}`` (keys as stored, e.g. with ``module.``);
        ``meta``: ``epoch``, ``mean_iu`` (float), ``command`` where the file has them.

    Raises:
        OfficialCheckpointError: file missing or unreadable, PyTorch missing, or a container
        of another shape.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise OfficialCheckpointError(f"{path}: checkpoint file not found")
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}, {}
        except (OSError, ValueError) as err:
            raise OfficialCheckpointError(f"{path}: not a readable .npz file ({err})") from err
    obj = _torch_load(path, trust)
    state_dict, meta = _container_state_dict(path, obj)
    arrays = {str(k): _to_numpy(path, k, v) for k, v in state_dict.items()}
    if "mean_iu" in meta:
        try:
            meta["mean_iu"] = float(meta["mean_iu"])
        except (TypeError, ValueError):
            meta.pop("mean_iu")
    if "epoch" in meta and not isinstance(meta["epoch"], (int, float)):
        meta.pop("epoch")
    return arrays, meta


def convert_official_checkpoint(path: str, config, trust: bool = False, log=None) -> tuple:
    """Reads ``path`` and returns ``(model, summary)``: a model of ``config.model`` with the weights.

    ``summary`` holds ``mapped``, ``dropped`` and the file's ``meta``.
    """
    from gscnn_tf.model import GatedSCNN

    state_dict, meta = read_official_checkpoint(path, trust=trust)
    if log:
        log(f"read {len(state_dict)} tensors from {path}")
    model = GatedSCNN(config.model, config.loss, config.dataset)
    summary = load_official_state_dict(model, state_dict, source=path)
    summary["meta"] = meta
    return model, summary

