"""evaluate.py: what each protocol costs in network inferences, counted on a wrapped model."""
import json
import logging
import os
import re

import pytest
from conftest import tiny_experiment_config, write_untrained_run


@pytest.fixture(scope="module")
def tiny_run(synthetic_tfrecords, tmp_path_factory):
    """A run directory (config.yaml over the synthetic val shards: 2 images of 64x128,
    checkpoints/best.weights.h5) of the tiny Gated-SCNN, untrained."""
    run = tmp_path_factory.mktemp("evaluate") / "run"
    return write_untrained_run(tiny_experiment_config(synthetic_tfrecords, str(run)), run)


class CountingModel:
    """Calls the model and counts the calls as they run (a variable, so calls inside the
    evaluation's tf.function count every time, not once per trace)."""

    def __init__(self, model):
        import tensorflow as tf

        self.model = model
        self.calls = tf.Variable(0, dtype=tf.int64, trainable=False)

    def __call__(self, images, training=False):
        self.calls.assign_add(1)
        return self.model(images, training=training)


@pytest.fixture
def counted(monkeypatch):
    """Wraps every model evaluate.py loads; returns the list of wrappers."""
    from gscnn_tf.training import checkpoints

    original = checkpoints.load_inference_model
    wrappers = []

    def load(path, config=None):
        model, cfg = original(path, config)
        wrappers.append(CountingModel(model))
        return wrappers[-1], cfg

    monkeypatch.setattr(checkpoints, "load_inference_model", load)
    return wrappers


def _evaluate(tiny_run, out, *flags):
    from gscnn_tf.cli.evaluate import main

    code = main(["--checkpoint", tiny_run, "--out", str(out), "--quiet", *flags])
    assert code == 0
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("flags, per_image, distance", [
    # the default: the paper's metrics; the distance-based IoU re-infers crops 0.75, 0.5, 0.25
    ([], 4, "resize"),
    # the released model's protocol: one inference per image, whatever the config's eval.flip
    (["--protocol", "official", "--set", "eval.flip=true"], 1, None),
    # explicit flags still win over the preset
    (["--protocol", "official", "--flip"], 2, None),
    (["--distance-mode", "crop", "--scales", "0.5", "1.0"], 2, "crop"),
])
def test_inferences_per_image_are_counted_and_stated(tiny_run, tmp_path, counted, caplog, flags, per_image, distance):
    caplog.set_level(logging.INFO, logger="gscnn_tf")
    report = _evaluate(tiny_run, tmp_path / "eval", *flags)
    assert report["num_images"] == 2
    assert int(counted[0].calls.numpy()) == 2 * per_image
    assert report["inferences_per_image"] == per_image
    assert (report.get("distance") or {}).get("mode") == distance
    started = [r.getMessage() for r in caplog.records if r.getMessage().startswith("evaluating ")]
    assert len(started) == 1 and re.search(rf"\b{per_image} network inference(s)? per image\b", started[0]), started


def test_set_without_config_starts_from_the_runs_config(tiny_run, tmp_path, counted):
    """(evaluate.py had this right before export did: a regression guard.)"""
    report = _evaluate(tiny_run, tmp_path / "eval", "--set", "eval.scales=[0.5]", "--distance-mode", "off")
    assert report["scales"] == [0.5] and int(counted[0].calls.numpy()) == 2


def test_test_split_reads_data_test_pattern(tiny_run, synthetic_tfrecords, tmp_path, counted):
    """--split test evaluates data.test_pattern (here the 8 training images), and says so."""
    report = _evaluate(tiny_run, tmp_path / "eval", "--split", "test", "--distance-mode", "off",
                       "--set", f"data.test_pattern={synthetic_tfrecords['train_pattern']}")
    assert report["split"] == "test" and report["num_images"] == 8


def test_test_split_without_a_pattern_names_the_field(tiny_run, tmp_path, capsys):
    from gscnn_tf.cli.evaluate import main

    assert main(["--checkpoint", tiny_run, "--out", str(tmp_path / "eval"), "--quiet", "--split", "test"]) != 0
    assert "data.test_pattern" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "eval" / "metrics.json")
