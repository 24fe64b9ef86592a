"""The official-checkpoint import: equivalence with the official PyTorch network (golden file).

``tests/data/official_golden.npz`` holds the official network's outputs on the weights
``random_official_state_dict(seed)`` (made by ``scripts/make_official_golden.py`` with PyTorch
and the official code; see there). Here the same weights are regenerated with NumPy,
converted by the real converter and run through ``build_gscnn`` (wrn38, official_compat).
"""
import json
import os

import numpy as np
import pytest

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "official_golden.npz")


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["meta"] = json.loads(str(arrays["meta"]))
    return arrays


def _official_config():
    from gscnn_tf.config import load_config

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return load_config(os.path.join(root, "configs", "cityscapes_wrn38_official.yaml"))


def _normalised(image_uint8):
    from gscnn_tf.backbones import normalization_for
    from gscnn_tf.data.pipeline import normalize_image

    mean, std = normalization_for("wrn38")
    return normalize_image(image_uint8[None], mean, std).numpy()


def _assert_matches_golden(model, golden):
    import keras

    from gscnn_tf.layers.canny import CannyEdges

    for size in golden["meta"]["sizes"]:
        x = _normalised(golden[f"image_{size}"])
        out = model(x, training=False)
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
        canny = keras.ops.convert_to_numpy(canny_layer(x))[0, ..., 0]
        np.testing.assert_array_equal(canny * 255, golden[f"canny_{size}"], err_msg=size)


def test_golden_file_is_small_and_covers_an_odd_size(golden):
    assert os.path.getsize(GOLDEN) < 3e6
    sizes = [tuple(int(v) for v in s.split("x")) for s in golden["meta"]["sizes"]]
    assert any(h % 64 or w % 64 for h, w in sizes) and len(sizes) >= 2
    for s in golden["meta"]["sizes"]:
        assert golden[f"canny_{s}"].any() and golden[f"seg_{s}"].shape[-1] == golden["meta"]["num_classes"]


@pytest.mark.slow
def test_converted_random_weights_match_the_official_network(golden):
    """Converter core + model: seg and edge within 1e-4 of the reference's max, Canny identical."""
    from gscnn_tf.convert.official_layout import random_official_state_dict
    from gscnn_tf.convert.official_pytorch import load_official_state_dict
    from gscnn_tf.model import build_gscnn

    cfg = _official_config()
    cfg.model.sync_batchnorm = False
    model = build_gscnn(cfg.model)
    state = {f"module.{k}": v for k, v in random_official_state_dict(golden["meta"]["seed"]).items()}
    state["module.criterion.seg_loss.nll_loss.weight"] = np.ones(19, np.float32)  # as in a training snapshot
    summary = load_official_state_dict(model, state)
    assert summary["mapped"] == 313
    assert len(summary["dropped"]) == 56 + 2 + 1
    _assert_matches_golden(model, golden)
