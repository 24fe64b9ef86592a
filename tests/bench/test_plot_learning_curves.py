"""bench/plot_learning_curves.py: the curves it reads are the training log's, and it writes a PNG."""
import csv
import importlib.util
import os

import cv2
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _script():
    spec = importlib.util.spec_from_file_location("plot_learning_curves",
                                                  os.path.join(ROOT, "bench", "plot_learning_curves.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_log(run_dir, val_miou):
    """A training_log.csv as Keras' CSVLogger writes it: ``NA`` in the validation columns of an epoch
    without validation (seen in real run logs: the first epoch of validation_freq=2)."""
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "training_log.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "loss", "miou", "val_loss", "val_miou"])
        for epoch, v in enumerate(val_miou):
            w.writerow([epoch, 1.0 / (epoch + 1), 0.1 * epoch] + (["NA", "NA"] if v is None else [2.0, v]))


def test_curve_skips_epochs_without_validation_and_counts_from_one(tmp_path):
    values = [None, 0.25, None, 0.5, float("nan"), 0.625]
    _write_log(str(tmp_path / "a"), values)
    epochs, got = _script().read_curve(str(tmp_path / "a"))
    expected = [(i + 1, v) for i, v in enumerate(values) if v is not None and np.isfinite(v)]
    assert list(zip(epochs, got)) == expected


def test_plot_writes_a_png_with_one_line_per_run(tmp_path):
    _write_log(str(tmp_path / "gscnn"), [0.1, 0.2, 0.3])
    _write_log(str(tmp_path / "baseline"), [0.1, 0.15, 0.2])
    out = str(tmp_path / "plots" / "curves.png")
    assert _script().main([str(tmp_path / "gscnn"), str(tmp_path / "baseline"), "--out", out]) == 0
    image = cv2.imread(out)
    assert image is not None and image.shape[0] > 100 and image.shape[1] > 100
    assert not os.path.exists(out + ".tmp.png")
    # matplotlib's first two default line colours (C0 blue, C1 orange) are both drawn.
    for bgr in ((180, 119, 31), (14, 127, 255)):
        assert np.any(np.all(np.abs(image.astype(int) - bgr) < 8, axis=-1)), bgr


def test_unknown_column_names_the_file(tmp_path):
    _write_log(str(tmp_path / "a"), [0.1])
    with pytest.raises(SystemExit, match=r"training_log\.csv: no column 'val_boundary_f'"):
        _script().read_curve(str(tmp_path / "a"), "val_boundary_f")
