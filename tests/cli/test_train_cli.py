"""train_keras.py: fine-tuning into a new run directory (--init-from), and logs without a terminal (the
callback here; the CLI's output to a pipe is checked on docs/TRAINING.md's block by tests/test_docs.py)."""
import hashlib
import logging
import os
import re

import numpy as np
import pytest
from conftest import tiny_experiment_config


def _tree_digest(root) -> dict:
    """{relative path: sha256} of every file under ``root`` (directories included by name)."""
    out = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(directory, name), root) + "/"] = "dir"
        for name in files:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def imported_run(synthetic_tfrecords, tmp_path_factory):
    """A run directory laid out as import_official_checkpoint.py writes it (config.yaml whose
    train.model_dir is the directory itself, checkpoints/best.weights.h5, import_info.json),
    with the tiny model and weights no initialiser produces (random noise on every weight)."""
    import json

    import keras

    from gscnn_tf.config import save_config
    from gscnn_tf.model import GatedSCNN

    run = tmp_path_factory.mktemp("imported") / "gscnn_official"
    cfg = tiny_experiment_config(synthetic_tfrecords, str(run))
    model = GatedSCNN(cfg.model, cfg.loss)
    rng = np.random.default_rng(7)
    model.set_weights([w + rng.normal(0.0, 0.05, w.shape).astype(w.dtype) if w.dtype.kind == "f" else w
                       for w in model.get_weights()])
    os.makedirs(run / "checkpoints")
    save_config(cfg, str(run / "config.yaml"))
    model.save_weights(str(run / "checkpoints" / "best.weights.h5"))
    (run / "import_info.json").write_text(json.dumps({"source": "fake.pth"}))
    weights = [keras.ops.convert_to_numpy(w) for w in model.trainable_weights]
    keras.backend.clear_session()
    return {"dir": str(run), "config": str(run / "config.yaml"), "trainable": weights}


def _train_main(argv):
    from gscnn_tf.cli.train import main

    return main(argv)


def test_fine_tuning_into_the_imported_directory_is_refused_and_leaves_it_intact(imported_run, capsys):
    """The trap: the official config's model_dir is the import's directory. Training there
    (plain, or with --fresh, which would delete the imported weights) is refused before
    anything is written, with one line that says what to do instead."""
    before = _tree_digest(imported_run["dir"])
    for extra in ([], ["--fresh"]):
        code = _train_main(["--config", imported_run["config"], "--init-from", imported_run["dir"], *extra])
        err = capsys.readouterr().err
        assert code == 2, err
        assert err.count("\n") == 1 and err.startswith("error: "), err
        assert imported_run["dir"] in err and "--model-dir" in err, err
        assert "--allow-config-change" not in err and "--fresh" not in err, err
    assert _tree_digest(imported_run["dir"]) == before


def test_init_from_weights_that_do_not_fit_is_one_line_naming_the_file(imported_run, tmp_path, capsys):
    new = tmp_path / "finetune"
    code = _train_main(["--config", imported_run["config"], "--init-from", imported_run["dir"],
                        "--set", f"train.model_dir={new}", "--set", "model.aspp_filters=24"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1, err
    assert os.path.join(imported_run["dir"], "checkpoints", "best.weights.h5") in err, err
    assert "aspp" in err, err  # names a variable that does not fit
    assert not new.exists()


@pytest.mark.slow
def test_fine_tune_starts_a_new_run_from_the_imported_weights(imported_run, tmp_path, capsys, caplog):
    """import -> train --init-from IMPORTED --set train.model_dir=NEW: NEW starts from the
    imported weights (a learning rate of 1e-30 leaves every trainable weight where it
    started), the imported directory is byte for byte as it was, and a rerun resumes NEW
    from its backup, saying that --init-from is ignored."""
    import keras

    from gscnn_tf.training.checkpoints import load_inference_model

    caplog.set_level(logging.INFO, logger="gscnn_tf")
    before = _tree_digest(imported_run["dir"])
    new = tmp_path / "finetune"
    argv = ["--config", imported_run["config"], "--init-from", imported_run["dir"],
            "--set", f"train.model_dir={new}", "--set", "train.learning_rate=1.0e-30", "--quiet"]
    assert _train_main(argv) == 0, capsys.readouterr().err
    assert _tree_digest(imported_run["dir"]) == before
    assert any("fine-tuning from" in r.getMessage() and imported_run["dir"] in r.getMessage() for r in caplog.records)

    model, cfg = load_inference_model(str(new / "checkpoints" / "last.weights.h5"))
    assert os.path.abspath(cfg.train.model_dir) == str(new)
    assert len(model.trainable_weights) == len(imported_run["trainable"])
    for variable, value in zip(model.trainable_weights, imported_run["trainable"]):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(variable), value, rtol=1e-6, atol=1e-7,
                                   err_msg=variable.path)

    caplog.clear()
    assert _train_main(argv) == 0, capsys.readouterr().err
    messages = [r.getMessage() for r in caplog.records]
    assert any(re.search(r"init.* ignored", m) and imported_run["dir"] in m for m in messages), messages
    assert _tree_digest(imported_run["dir"]) == before


# ----------------------------------------------------------------------------- logs without a terminal


def test_epoch_line_callback_prints_one_plain_line_per_epoch(capsys):
    from gscnn_tf.training.callbacks import EpochLines

    lines = EpochLines(total_epochs=12)
    lines.on_epoch_begin(2)
    lines.on_epoch_end(2, {"loss": np.float32(1.23456), "miou": 0.25, "val_loss": 3.5, "val_miou": 1e-5})
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and not re.search(r"[\x1b\r\b]", out)
    assert re.fullmatch(r"epoch 3/12 - \d+(\.\d)? s - loss: 1\.2346 - miou: 0\.2500 - val_loss: 3\.5000 "
                        r"- val_miou: 1\.0000e-05\n", out), out
