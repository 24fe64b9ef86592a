"""The official-checkpoint import: equivalence with the official PyTorch network (golden file).

``tests/golden/official_golden.npz`` holds the official network's outputs on the weights
``random_official_state_dict(seed)`` (made by ``scripts/make_official_golden.py`` with PyTorch
and the official code; see there). Here the same weights are regenerated with NumPy,
converted by the real converter and run through ``GatedSCNN`` (wrn38, official_compat).
"""
import json
import os

import numpy as np
import pytest

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "golden", "official_golden.npz")


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["meta"] = json.loads(str(arrays["meta"]))
    return arrays


def _official_config():
    from gscnn_tf.config import load_config

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return load_config(os.path.join(root, "configs", "cityscapes_wrn38_official.yaml"))


def _assert_matches_golden(model, golden):
    import keras

    from gscnn_tf.layers.canny import CannyEdges

    for size in golden["meta"]["sizes"]:
        image = golden[f"image_{size}"][None]  # uint8 RGB: the model normalises it itself
        out = model(image, training=False)
        seg = keras.ops.convert_to_numpy(out["seg_logits"])[0]
        edge = keras.ops.convert_to_numpy(out["edge"])[0, ..., 0]
        ref_seg, ref_edge = golden[f"seg_{size}"], golden[f"edge_{size}"]
        seg_err = np.abs(seg - ref_seg).max() / np.abs(ref_seg).max()
        edge_err = np.abs(edge - ref_edge).max() / np.abs(ref_edge).max()
        agreement = np.mean(seg.argmax(-1) == ref_seg.argmax(-1))
        assert seg_err <= 1e-4, (size, seg_err)
        assert edge_err <= 1e-4, (size, edge_err)
        assert agreement >= 0.9999, (size, agreement)
        canny_layer = model.get_layer("canny")
        assert isinstance(canny_layer, CannyEdges)
        # official_compat: the Canny layer reads the normalised image (wrapped to uint8)
        canny = keras.ops.convert_to_numpy(canny_layer(model.get_layer("normalize")(image)))[0, ..., 0]
        np.testing.assert_array_equal(canny * 255, golden[f"canny_{size}"], err_msg=size)


def test_golden_file_is_small_and_covers_an_odd_size(golden):
    assert os.path.getsize(GOLDEN) < 3e6
    sizes = [tuple(int(v) for v in s.split("x")) for s in golden["meta"]["sizes"]]
    assert any(h % 64 or w % 64 for h, w in sizes) and len(sizes) >= 2
    for s in golden["meta"]["sizes"]:
        assert golden[f"canny_{s}"].any() and golden[f"seg_{s}"].shape[-1] == golden["meta"]["num_classes"]


# ----------------------------------------------------------------------------- converter strictness


@pytest.fixture(scope="module")
def official_model():
    from gscnn_tf.model import GatedSCNN

    cfg = _official_config()
    cfg.model.sync_batchnorm = False
    return GatedSCNN(cfg.model)


def _zeros_state_dict():
    """The official layout filled with zeros (np.zeros pages are only touched when written)."""
    from gscnn_tf.checkpoint_import.official_layout import official_state_dict_shapes

    return {f"module.{k}": np.zeros(s, np.int64 if k.endswith("num_batches_tracked") else np.float32)
            for k, s in official_state_dict_shapes().items()}


def test_layout_matches_the_model_exactly(official_model):
    """Every weight of the official model gets exactly one official tensor, of the right shape."""
    from gscnn_tf.checkpoint_import.official_layout import is_unused_key, official_state_dict_shapes
    from gscnn_tf.checkpoint_import.official_pytorch import _expected_source_shape, conversion_plan

    plan = conversion_plan(official_model)
    shapes = official_state_dict_shapes()
    assert len(shapes) == 371 and sum(map(is_unused_key, shapes)) == 58
    assert sorted(plan) == sorted(k for k in shapes if not is_unused_key(k))
    for key, (variable, transform) in plan.items():
        assert _expected_source_shape(variable.shape, transform) == shapes[key], key
    # 137,278,125 used parameters (+ 44,220 BN statistics), as the official network's count
    # (137,278,190) less the unused dsn1 (65).
    used = sum(int(np.prod(shapes[k])) for k in plan if not k.endswith(("running_mean", "running_var")))
    assert used == 137_278_125
    assert sum(int(np.prod(w.shape)) for w in official_model.trainable_weights) == used
    assert official_model.count_params() == used + 44_220


def test_conversion_transforms(official_model):
    """Kernels OIHW -> HWIO, BN tensors to gamma/beta/moving stats, cw's Canny column x255."""
    from gscnn_tf.checkpoint_import.official_pytorch import load_official_state_dict

    state = _zeros_state_dict()
    rng = np.random.RandomState(3)
    picks = {
        "module.mod4.block1.convs.conv1.weight": (512, 256, 3, 3),
        "module.final_seg.1.running_var": (256,),
        "module.cw.weight": (1, 2, 1, 1),
        "module.gate2._gate_conv.3.bias": (1,),
    }
    for key, shape in picks.items():
        state[key] = rng.uniform(0.1, 1.0, shape).astype(np.float32)
    load_official_state_dict(official_model, state)
    backbone = official_model.get_layer("wrn38_os8")
    kernel = backbone.get_layer("mod4_block1_conv1").kernel.numpy()
    np.testing.assert_array_equal(kernel[1, 2, 5, 7], state["module.mod4.block1.convs.conv1.weight"][7, 5, 1, 2])
    bn = official_model.get_layer("decoder").refine1.get_layer("bn")
    np.testing.assert_array_equal(bn.moving_variance.numpy(), state["module.final_seg.1.running_var"])
    cw = state["module.cw.weight"][0, :, 0, 0]
    fuse = official_model.get_layer("shape_stream").canny_fuse.kernel.numpy()[0, 0, :, 0]
    np.testing.assert_allclose(fuse, [cw[0], cw[1] * 255.0], rtol=1e-6)
    gate = official_model.get_layer("shape_stream").gates[1]
    np.testing.assert_array_equal(gate.attention_out.bias.numpy(), state["module.gate2._gate_conv.3.bias"])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("module.final_seg.6.weight"), "1 missing key(s): 'final_seg.6.weight'"),
        (lambda s: s.update({"module.extra.weight": np.zeros(3, np.float32)}), "unexpected key(s): 'extra.weight'"),
        (lambda s: s.update({"module.bot_fine.weight": np.zeros((48, 256, 1, 1), np.float32)}),
         "'bot_fine.weight' has shape (48, 256, 1, 1), expected (48, 128, 1, 1)"),
        (lambda s: s.update({"module.final_seg.6.weight": np.zeros((21, 256, 1, 1), np.float32)}),
         "'final_seg.6.weight' has shape (21, 256, 1, 1), expected (19, 256, 1, 1)"),
        (lambda s: s.update({"module.d1.bias": np.zeros(32, np.int64)}), "'d1.bias' has dtype int64"),
    ],
    ids=["missing", "unexpected", "wrong-shape", "wrong-classes", "wrong-dtype"],
)
def test_conversion_is_strict_and_names_the_key(official_model, change, message):
    from gscnn_tf.checkpoint_import.official_pytorch import OfficialCheckpointError, load_official_state_dict

    classifier = official_model.get_layer("decoder").classifier.kernel
    before = classifier.numpy().copy()
    state = _zeros_state_dict()
    change(state)
    with pytest.raises(OfficialCheckpointError, match="my.pth") as info:
        load_official_state_dict(official_model, state, source="my.pth")
    assert message in str(info.value)
    np.testing.assert_array_equal(classifier.numpy(), before)  # nothing assigned


def test_unused_keys_are_dropped_and_prefix_optional(official_model):
    from gscnn_tf.checkpoint_import.official_pytorch import load_official_state_dict

    state = {k[len("module."):]: v for k, v in _zeros_state_dict().items()}  # bare keys, no DataParallel
    state["criterion.seg_loss.nll_loss.weight"] = np.ones(19, np.float32)
    summary = load_official_state_dict(official_model, state)
    assert summary["mapped"] == 313
    assert "criterion.seg_loss.nll_loss.weight" in summary["dropped"] and "dsn1.weight" in summary["dropped"]


def test_model_without_compat_is_refused():
    from gscnn_tf.checkpoint_import.official_pytorch import OfficialCheckpointError, conversion_plan
    from gscnn_tf.config import ModelConfig
    from gscnn_tf.model import GatedSCNN

    with pytest.raises(OfficialCheckpointError, match="official_compat"):
        conversion_plan(GatedSCNN(ModelConfig(backbone="wrn38", official_compat=False, sync_batchnorm=False)))


# ----------------------------------------------------------------------------- CLI


def test_cli_fails_cleanly_and_writes_nothing(tmp_path, capsys):
    from gscnn_tf.cli import import_official as cli

    state = _zeros_state_dict()
    state.pop("module.aspp.features.2.0.weight")
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{k: v for k, v in state.items() if v.ndim < 4 or v.size < 10})  # small file, many keys missing
    out = tmp_path / "run"
    assert cli.main(["--checkpoint", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "bad.npz" in err and "missing key(s)" in err and "'aspp.features.2.0.weight'" in err
    assert not out.exists() and sorted(os.listdir(tmp_path)) == ["bad.npz"]
    assert cli.main(["--checkpoint", str(tmp_path / "nope.pth"), "--out", str(out)]) == 2
    assert "nope.pth: checkpoint file not found" in capsys.readouterr().err
    assert cli.main(["--checkpoint", str(bad), "--out", str(out), "--set", "model.official_compat=false"]) == 2
    assert "official_compat=true" in capsys.readouterr().err
    out.mkdir()
    assert cli.main(["--checkpoint", str(bad), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_run_directory_evaluates_like_the_official_network(tmp_path, golden):
    """A training snapshot (.npz) -> import CLI -> run directory -> load_inference_model: seg and edge
    within 1e-4 of the official network's max, Canny identical. (README's official-checkpoint block,
    run by tests/test_docs.py, exports such a run; its check compares the SavedModel's classes with the
    golden file's.)"""
    from gscnn_tf.checkpoint_import.official_layout import random_official_state_dict
    from gscnn_tf.cli import import_official as cli
    from gscnn_tf.training.checkpoints import BEST_WEIGHTS, load_inference_model

    state = {f"module.{k}": v for k, v in random_official_state_dict(golden["meta"]["seed"]).items()}
    state["module.criterion.seg_loss.nll_loss.weight"] = np.ones(19, np.float32)  # as in a training snapshot
    source = tmp_path / "official.npz"
    np.savez(source, **state)
    run = tmp_path / "run"
    assert cli.main(["--checkpoint", str(source), "--out", str(run)]) == 0
    os.remove(source)
    assert (run / BEST_WEIGHTS).is_file() and (run / "config.yaml").is_file()
    assert os.stat(run).st_mode & 0o077, "run directory readable by others like any training run"
    info = json.loads((run / "import_info.json").read_text())
    assert info["mapped_tensors"] == 313 and len(info["dropped_keys"]) == 56 + 2 + 1
    assert "criterion.seg_loss.nll_loss.weight" in " ".join(info["dropped_keys"])
    model, config = load_inference_model(str(run))
    assert config.model.backbone == "wrn38" and config.model.official_compat and config.train.model_dir == str(run)
    _assert_matches_golden(model, golden)
