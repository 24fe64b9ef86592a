"""Reading the official checkpoint container (``read_official_checkpoint``) on tiny files.

Needs no TensorFlow (``gscnn_tf.checkpoint_import.official_pytorch`` imports Keras lazily), so it also
runs in a PyTorch-only venv: ``python -m pytest --noconftest tests/test_official_reader.py``.
Tests that write ``.pth`` files skip when PyTorch is not installed (the ``convert`` extra).
"""
import argparse
import sys

import numpy as np
import pytest

from gscnn_tf.checkpoint_import.official_pytorch import OfficialCheckpointError, read_official_checkpoint


def _snapshot(torch):
    """The official training snapshot's container, with tiny tensors."""
    state = {
        "module.mod1.conv1.weight": torch.arange(6, dtype=torch.float32).reshape(1, 2, 3, 1),
        "module.final_seg.1.num_batches_tracked": torch.tensor(7),
        "module.criterion.seg_loss.nll_loss.weight": torch.ones(19),
    }
    return {
        "state_dict": state,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.01, "params": [0, 1]}]},
        "epoch": 93,
        "mean_iu": np.float64(0.8123),  # what the official code stores: a NumPy scalar
        "command": "--dataset cityscapes --arch network.gscnn.GSCNN",
    }


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_reads_the_official_snapshot_safely(torch, tmp_path, zip_format):
    path = tmp_path / "best_cityscapes_checkpoint.pth"
    torch.save(_snapshot(torch), path, _use_new_zipfile_serialization=zip_format)
    state, meta = read_official_checkpoint(str(path))
    assert sorted(state) == sorted(_snapshot(torch)["state_dict"])
    np.testing.assert_array_equal(state["module.mod1.conv1.weight"], np.arange(6, dtype=np.float32).reshape(1, 2, 3, 1))
    assert state["module.mod1.conv1.weight"].dtype == np.float32
    assert state["module.criterion.seg_loss.nll_loss.weight"].shape == (19,)
    assert meta == {"epoch": 93, "mean_iu": pytest.approx(0.8123), "command": _snapshot(torch)["command"]}
    assert type(meta["mean_iu"]) is float


def test_reads_a_numpy1_pickle_of_the_scalar(torch, tmp_path):
    """2019 files name the scalar constructor numpy.core.multiarray.scalar (NumPy 1.x)."""
    path = tmp_path / "old.pth"
    torch.save(_snapshot(torch), path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    assert b"numpy._core.multiarray\nscalar" in data
    path.write_bytes(data.replace(b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar"))
    _, meta = read_official_checkpoint(str(path))
    assert meta["mean_iu"] == pytest.approx(0.8123)


def test_reads_a_bare_state_dict(torch, tmp_path):
    path = tmp_path / "bare.pth"
    torch.save({"mod1.conv1.weight": torch.zeros(64, 3, 3, 3), "cw.weight": torch.ones(1, 2, 1, 1)}, path)
    state, meta = read_official_checkpoint(str(path))
    assert sorted(state) == ["cw.weight", "mod1.conv1.weight"] and meta == {}
    assert state["mod1.conv1.weight"].shape == (64, 3, 3, 3)


def test_refuses_arbitrary_objects_unless_trusted(torch, tmp_path):
    path = tmp_path / "odd.pth"
    snapshot = _snapshot(torch)
    snapshot["args"] = argparse.Namespace(lr=0.01)  # a Python object a safe load must not rebuild
    torch.save(snapshot, path)
    with pytest.raises(OfficialCheckpointError, match="--trust-checkpoint") as info:
        read_official_checkpoint(str(path))
    assert "odd.pth" in str(info.value)
    state, meta = read_official_checkpoint(str(path), trust=True)
    assert "module.mod1.conv1.weight" in state and meta["epoch"] == 93


def test_rejects_garbage_and_other_containers(torch, tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(OfficialCheckpointError, match="garbage.pth"):
        read_official_checkpoint(str(garbage))
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], listed)
    with pytest.raises(OfficialCheckpointError, match="expected a dict with a 'state_dict' entry"):
        read_official_checkpoint(str(listed))
    non_tensor = tmp_path / "non_tensor.pth"
    torch.save({"state_dict": {"module.d1.weight": [1.0, 2.0]}}, non_tensor)
    with pytest.raises(OfficialCheckpointError, match="'module.d1.weight' is a list"):
        read_official_checkpoint(str(non_tensor))


def test_missing_torch_gives_an_install_hint(tmp_path, monkeypatch):
    path = tmp_path / "best.pth"
    path.write_bytes(b"PK")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(OfficialCheckpointError, match=r"pip install -e '\.\[convert\]'"):
        read_official_checkpoint(str(path))


def test_npz_needs_no_torch_and_missing_files_are_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    path = tmp_path / "state.npz"
    np.savez(path, **{"module.cw.weight": np.ones((1, 2, 1, 1), np.float32)})
    state, meta = read_official_checkpoint(str(path))
    assert list(state) == ["module.cw.weight"] and meta == {}
    with pytest.raises(OfficialCheckpointError, match="nope.pth: checkpoint file not found"):
        read_official_checkpoint(str(tmp_path / "nope.pth"))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"nope")
    with pytest.raises(OfficialCheckpointError, match="bad.npz: not a readable .npz"):
        read_official_checkpoint(str(bad))
