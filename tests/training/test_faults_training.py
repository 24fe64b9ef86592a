"""Training under faults: divergence, kills between writes, config changes, bad shards, full disks.

Each test reproduces one way a run could lose good results or die badly, and pins what
happens instead (README, "Reliability"). Most start from a copy of one small finished
run (``trained_run``: 1 epoch of 3 steps, made under umask 022).
"""
import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import tiny_experiment_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BEST = os.path.join("checkpoints", "best.weights.h5")
LAST = os.path.join("checkpoints", "last.weights.h5")


def _digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _tree(run):
    """{relative path: sha256} of every file under ``run`` (directories as None)."""
    out = {}
    for root, dirs, files in os.walk(run):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), run)] = None
        for f in files:
            out[os.path.relpath(os.path.join(root, f), run)] = _digest(os.path.join(root, f))
    return out


def _csv_rows(run):
    with open(os.path.join(run, "training_log.csv"), newline="") as f:
        return list(csv.DictReader(f))


def _pointer(run):
    with open(os.path.join(run, "backup", "latest.json")) as f:
        return json.load(f)


def _load_finite(path, cfg=None):
    from gscnn_tf.training.checkpoints import load_inference_model, non_finite_weights

    model, _ = load_inference_model(str(path), cfg)
    return model, not non_finite_weights(model)


def _run_cli(args, timeout=600):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, os.path.join(REPO, "train_keras.py"), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def trained_run(synthetic_tfrecords, tmp_path_factory):
    """One finished epoch (3 steps, validation on 2 images), written under umask 022."""
    from gscnn_tf.training.run import train

    run = tmp_path_factory.mktemp("trained") / "run"
    cfg = tiny_experiment_config(synthetic_tfrecords, run)
    old_umask = os.umask(0o022)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            summary = train(cfg)
    finally:
        os.umask(old_umask)
    return {"run": str(run), "summary": summary, "warnings": [str(w.message) for w in caught]}


def _copy(trained_run, dest):
    shutil.copytree(trained_run["run"], dest)
    return str(dest)


# ----------------------------------------------------------------------------- divergence


@pytest.mark.slow
def test_diverged_run_stops_with_an_error_and_keeps_every_good_file(synthetic_tfrecords, trained_run, tmp_path):
    import keras

    from gscnn_tf.training.errors import TrainingFailed
    from gscnn_tf.training.run import train

    run = _copy(trained_run, tmp_path / "run")
    kept = (BEST, LAST, "model.keras", os.path.join("backup", "step-00000003", "trainer.weights.h5"),
            os.path.join("backup", "latest.json"))
    before = {name: _digest(os.path.join(run, name)) for name in kept}
    huge = tiny_experiment_config(synthetic_tfrecords, run, epochs=3, learning_rate=1e12)
    with pytest.raises(TrainingFailed, match="diverged") as info:
        train(huge, allow_config_change=True)
    message = str(info.value)
    assert "last good backup is at step 3" in message and len(message.splitlines()) == 1
    assert {name: _digest(os.path.join(run, name)) for name in kept} == before
    assert not [p for p in _tree(run) if ".tmp" in p]
    for name in (BEST, LAST, "model.keras"):
        assert _load_finite(os.path.join(run, name))[1], name

    # A sane learning rate resumes from the last good backup (step 3) and finishes finite.
    keras.backend.clear_session()
    sane = tiny_experiment_config(synthetic_tfrecords, run, epochs=2)
    summary = train(sane, allow_config_change=True)
    assert summary["resumed_from_step"] == 3 and summary["global_step"] == 6
    assert all(np.isfinite(v) for v in summary["history"]["loss"])
    for name in (BEST, LAST, "model.keras"):
        assert _load_finite(os.path.join(run, name))[1], name


def test_weights_check_finds_a_nan_by_name():
    import keras

    from gscnn_tf.training.checkpoints import non_finite_weights

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="head")])
    assert non_finite_weights(model) == []
    kernel = model.layers[0].kernel
    value = np.array(kernel.numpy())
    value[1, 0] = np.inf
    kernel.assign(value)
    assert non_finite_weights(model) == [kernel.path]


# ----------------------------------------------------------------------------- best survives resume


@pytest.mark.slow
def test_best_checkpoint_is_not_replaced_by_a_worse_epoch_after_resume(synthetic_tfrecords, trained_run, tmp_path):
    from gscnn_tf.training.run import train

    run = _copy(trained_run, tmp_path / "run")
    meta = _pointer(run)
    # The backup keeps the best value seen so far, equal to the CSV's.
    assert meta["best"]["value"] == pytest.approx(float(_csv_rows(run)[0]["val_miou"]))
    assert meta["best"]["epoch"] == 1
    # Say the run's best so far is far better than one more tiny epoch can reach.
    meta["best"]["value"] = 0.99
    with open(os.path.join(run, "backup", "latest.json"), "w") as f:
        json.dump(meta, f)
    best_before = _digest(os.path.join(run, BEST))
    summary = train(tiny_experiment_config(synthetic_tfrecords, run, epochs=2), allow_config_change=True)
    assert summary["history"]["val_miou"][-1] < 0.99
    assert _digest(os.path.join(run, BEST)) == best_before
    after = _pointer(run)
    assert after["best"]["value"] == 0.99 and after["best"]["epoch"] == 1


# ----------------------------------------------------------------------------- kill between writes


class _Killed(BaseException):
    """Stands in for SIGKILL: nothing catches it and no later write happens."""


def _kill_when_publishing(monkeypatch, name: str) -> None:
    """Makes the atomic rename that would publish a file called ``name`` raise _Killed."""
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if os.path.basename(dst) == name:
            raise _Killed(dst)
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["best.weights.h5", "last.weights.h5", "training_log.csv"])
def test_kill_between_the_epoch_end_writes_is_completed_by_the_rerun(synthetic_tfrecords, tmp_path, monkeypatch, victim):
    import keras

    from gscnn_tf.training.run import train

    run = str(tmp_path / "run")
    cfg = tiny_experiment_config(synthetic_tfrecords, run)
    _kill_when_publishing(monkeypatch, victim)
    with pytest.raises(_Killed):
        train(cfg)
    monkeypatch.undo()
    assert not os.path.exists(os.path.join(run, "checkpoints", victim) if victim.endswith(".h5")
                              else os.path.join(run, victim))
    assert not os.path.exists(os.path.join(run, "model.keras"))  # it really stopped in the epoch end

    keras.backend.clear_session()
    summary = train(cfg)  # the epoch is complete: nothing left to train, only to write
    assert summary["global_step"] == 3
    rows = _csv_rows(run)
    assert [r["epoch"] for r in rows] == ["0"]
    assert float(rows[0]["val_miou"]) == pytest.approx(_pointer(run)["epoch_end"]["logs"]["val_miou"])
    final, _ = _load_finite(os.path.join(run, "model.keras"))
    for name in (BEST, LAST):
        model, finite = _load_finite(os.path.join(run, name))
        assert finite
        for a, b in zip(model.get_weights(), final.get_weights()):
            np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_kill_during_validation_redoes_the_epoch_end(synthetic_tfrecords, tmp_path, monkeypatch):
    """Step backups every step: a kill in the epoch's validation must not resume past the epoch."""
    import keras

    from gscnn_tf.model import GatedSCNN
    from gscnn_tf.training.run import train

    run = str(tmp_path / "run")
    cfg = tiny_experiment_config(synthetic_tfrecords, run, backup_save_freq=1)

    def killed_in_validation(self, *args, **kwargs):
        raise _Killed("validation")

    monkeypatch.setattr(GatedSCNN, "evaluate", killed_in_validation)
    with pytest.raises(_Killed):
        train(cfg)
    monkeypatch.undo()
    assert _pointer(run)["global_step"] == 2  # the last step's backup waits for the epoch end
    keras.backend.clear_session()
    summary = train(cfg)
    assert summary["resumed_from_step"] == 2 and summary["global_step"] == 3
    assert [r["epoch"] for r in _csv_rows(run)] == ["0"]
    assert os.path.isfile(os.path.join(run, BEST))


@pytest.mark.slow
def test_an_epoch_written_twice_leaves_one_csv_row(synthetic_tfrecords, tmp_path, monkeypatch):
    """Kill at the CSV of epoch 1 of 2: the rerun writes epoch 1's row once, then epoch 2's."""
    import keras

    from gscnn_tf.training.run import train

    run = str(tmp_path / "run")
    cfg = tiny_experiment_config(synthetic_tfrecords, run, epochs=2)
    _kill_when_publishing(monkeypatch, "training_log.csv")
    with pytest.raises(_Killed):
        train(cfg)
    monkeypatch.undo()
    keras.backend.clear_session()
    summary = train(cfg)
    assert summary["resumed_from_step"] == 3 and summary["global_step"] == 6
    assert [r["epoch"] for r in _csv_rows(run)] == ["0", "1"]


# ----------------------------------------------------------------------------- config changes


@pytest.mark.slow  # the trained_run fixture trains an epoch
@pytest.mark.parametrize("field, value", [
    ("output_stride", 16),  # shape-compatible: the weights would load and mean another model
    ("num_classes", 5),
    ("canny", False),
    ("mobilenet_alpha", 0.5),
])
def test_a_model_change_is_refused_before_anything_is_written(synthetic_tfrecords, trained_run, tmp_path, field, value):
    from gscnn_tf.training.errors import TrainingError
    from gscnn_tf.training.run import train

    run = _copy(trained_run, tmp_path / "run")
    before = _tree(run)
    cfg = tiny_experiment_config(synthetic_tfrecords, run)
    setattr(cfg.model, field, value)
    with pytest.raises(TrainingError, match=rf"another model \(model\.{field}: "):
        train(cfg)
    with pytest.raises(TrainingError, match="another model"):
        train(cfg, allow_config_change=True)  # the flag is for non-model fields only
    assert _tree(run) == before


@pytest.mark.slow
def test_a_changed_config_needs_a_flag_and_the_cli_says_which(synthetic_tfrecords, trained_run, tmp_path):
    from gscnn_tf.config import save_config
    from gscnn_tf.training.errors import TrainingError
    from gscnn_tf.training.run import train

    run = _copy(trained_run, tmp_path / "run")
    before = _tree(run)
    with pytest.raises(TrainingError, match=r"train\.learning_rate: 0\.01 -> 0\.5.*--allow-config-change"):
        train(tiny_experiment_config(synthetic_tfrecords, run, learning_rate=0.5))
    assert _tree(run) == before
    config = str(tmp_path / "c.yaml")
    save_config(tiny_experiment_config(synthetic_tfrecords, run), config)
    result = _run_cli(["--config", config, "--set", "model.output_stride=16"])
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(_error_lines(result.stderr)) == 1 and "model.output_stride: 8 -> 16" in result.stderr
    assert "Traceback" not in result.stderr
    assert _tree(run) == before


# ----------------------------------------------------------------------------- shards and records


def _records_copy(synthetic, dest):
    shutil.copytree(synthetic["records"], dest)
    return {"train_pattern": os.path.join(dest, "train_fine-*.tfrecord"),
            "val_pattern": os.path.join(dest, "val_fine-*.tfrecord")}


def test_training_checks_the_shards_against_the_manifest(synthetic_tfrecords, tmp_path):
    from gscnn_tf.training.run import train

    records = str(tmp_path / "rec")
    data = _records_copy(synthetic_tfrecords, records)
    cfg = tiny_experiment_config(data, tmp_path / "run")
    shard = os.path.join(records, "train_fine-00001-of-00002.tfrecord")
    saved = shard + ".saved"
    os.rename(shard, saved)
    with pytest.raises(ValueError, match=r"train_manifest\.json lists 2 shards, 1 of them missing: "
                                         r"train_fine-00001-of-00002\.tfrecord"):
        train(cfg)
    os.rename(saved, shard)
    # A shard left over from an earlier conversion with another shard count.
    shutil.copy(shard, os.path.join(records, "train_fine-00002-of-00003.tfrecord"))
    with pytest.raises(ValueError, match=r"no manifest lists: train_fine-00002-of-00003\.tfrecord"):
        train(cfg)
    os.remove(os.path.join(records, "train_fine-00002-of-00003.tfrecord"))
    # A truncated shard.
    size = os.path.getsize(shard)
    with open(shard, "r+b") as f:
        f.truncate(size // 2)
    with pytest.raises(ValueError, match=rf"train_fine-00001-of-00002\.tfrecord: {size // 2} bytes, .* says {size} "
                                         r"\(truncated or changed\)"):
        train(cfg)
    assert not os.path.exists(tmp_path / "run")  # refused before anything was written


@pytest.mark.slow
def test_a_corrupt_shard_stops_training_with_one_line_naming_it(synthetic_tfrecords, tmp_path):
    from gscnn_tf.training.errors import TrainingFailed
    from gscnn_tf.training.run import train

    records = str(tmp_path / "rec")
    data = _records_copy(synthetic_tfrecords, records)
    shard = os.path.join(records, "train_fine-00000-of-00002.tfrecord")
    with open(shard, "r+b") as f:  # same size, so only the record checksums can tell
        f.seek(os.path.getsize(shard) // 2)
        f.write(b"\x00garbage\x00" * 8)
    with pytest.raises(TrainingFailed) as info:
        train(tiny_experiment_config(data, tmp_path / "run"))
    message = str(info.value)
    assert message.startswith(f"corrupt shard {shard}: ") and len(message.splitlines()) == 1, message


@pytest.mark.slow
def test_a_record_whose_label_size_differs_is_refused_naming_it(tmp_path):
    import tensorflow as tf

    from gscnn_tf.data.tfexample import make_example
    from gscnn_tf.training.errors import TrainingFailed
    from gscnn_tf.training.run import train

    rng = np.random.default_rng(0)
    image = tf.io.encode_png(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8)).numpy()
    good_label = tf.io.encode_png(rng.integers(0, 5, (64, 96, 1), dtype=np.uint8)).numpy()
    bad_label = tf.io.encode_png(rng.integers(0, 5, (32, 48, 1), dtype=np.uint8)).numpy()
    shard = str(tmp_path / "mixed-00000-of-00001.tfrecord")
    with tf.io.TFRecordWriter(shard) as writer:
        writer.write(make_example(image, good_label, "a/good.png", 64, 96).SerializeToString())
        writer.write(make_example(image, bad_label, "a/half_size_label.png", 64, 96).SerializeToString())
    data = {"train_pattern": shard, "val_pattern": shard}
    cfg = tiny_experiment_config(data, tmp_path / "run")
    cfg.data.crop_size = [32, 32]
    with pytest.raises(TrainingFailed) as info:
        train(cfg)
    message = str(info.value)
    assert "label size differs" in message and shard in message and "a/half_size_label.png" in message, message
    assert len(message.splitlines()) == 1


# ----------------------------------------------------------------------------- disk full


@pytest.fixture
def small_tmpfs(tmp_path):
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    state = {"mount": mount, "mounted": False}

    def mount_with(size_kb):
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mount)],
                                capture_output=True, text=True)
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip()})")
        state["mounted"] = True
        return str(mount)

    yield mount_with
    if state["mounted"]:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.slow
def test_disk_full_during_training_is_one_line_exit_1_and_keeps_the_backup(synthetic_tfrecords, trained_run,
                                                                          tmp_path, small_tmpfs):
    from gscnn_tf.config import save_config

    used_kb = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(trained_run["run"]) for f in fs) // 1024
    # Room for the run, its config and CSV, and ~3 MB more: less than the 4 MB epoch-end backup.
    mount = small_tmpfs(used_kb + 3 * 1024)
    run = _copy(trained_run, os.path.join(mount, "run"))
    pointer_before = _digest(os.path.join(run, "backup", "latest.json"))
    backup_weights = os.path.join(run, "backup", "step-00000003", "trainer.weights.h5")
    weights_before = _digest(backup_weights)
    config = str(tmp_path / "c.yaml")
    save_config(tiny_experiment_config(synthetic_tfrecords, run), config)
    result = _run_cli(["--config", config, "--epochs", "2", "--allow-config-change", "--quiet"])
    assert result.returncode == 1, result.stderr[-3000:]
    errors = _error_lines(result.stderr)
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert errors[0].startswith(f"error: cannot write {run}/backup/step-00000006") and "No space left" in errors[0]
    assert _digest(os.path.join(run, "backup", "latest.json")) == pointer_before
    assert _digest(backup_weights) == weights_before
    assert not [p for p in _tree(run) if ".tmp" in p]


# ----------------------------------------------------------------------------- temporaries, modes, warnings


def test_temporaries_of_a_killed_run_are_removed_by_the_next_run(synthetic_tfrecords, trained_run, tmp_path):
    from gscnn_tf.training.run import train

    run = _copy(trained_run, tmp_path / "run")
    stale = [
        os.path.join(run, ".model.keras.k3x9_abc.tmp.keras"),
        os.path.join(run, ".config.yaml.q1w2e3r4.tmp"),
        os.path.join(run, "checkpoints", ".best.weights.h5.zz99yy88.tmp.weights.h5"),
        os.path.join(run, "backup", ".step-00000009.qwer_tyu.tmp"),
        os.path.join(run, "backup", ".step-00000003.asdfghjk.tmp.old"),
        os.path.join(run, "backup", "step-00000002"),  # a backup that lost the race to latest.json
    ]
    for path in stale:
        if os.path.basename(path).startswith("step-") or path.endswith((".tmp", ".old")):
            os.makedirs(path)
            with open(os.path.join(path, "trainer.weights.h5"), "wb") as f:
                f.write(b"partial")
        else:
            with open(path, "wb") as f:
                f.write(b"partial")
    mine = os.path.join(run, "notes.tmp")  # not one of ours: stays
    with open(mine, "w") as f:
        f.write("keep")
    train(tiny_experiment_config(synthetic_tfrecords, run))  # already complete: only the final writes
    assert [p for p in stale if os.path.exists(p)] == []
    assert os.path.exists(mine) and os.path.isdir(os.path.join(run, "backup", "step-00000003"))


def test_published_training_files_follow_the_umask(trained_run):
    run = trained_run["run"]
    for name in ("config.yaml", "model.keras", BEST, LAST, "training_log.csv", "train_summary.json",
                 os.path.join("backup", "latest.json"), os.path.join("backup", "step-00000003", "trainer.weights.h5")):
        assert oct(os.stat(os.path.join(run, name)).st_mode & 0o777) == "0o644", name
    assert oct(os.stat(os.path.join(run, "backup", "step-00000003")).st_mode & 0o777) == "0o755"


def test_atomic_writes_take_the_umask_mode(tmp_path):
    from gscnn_tf.utils.atomic import atomic_directory, atomic_write_text

    old = os.umask(0o027)
    try:
        atomic_write_text(str(tmp_path / "f.txt"), "x")
        with atomic_directory(str(tmp_path / "d")) as tmp:
            with open(os.path.join(tmp, "inner"), "w") as f:
                f.write("x")
    finally:
        os.umask(old)
    assert oct(os.stat(tmp_path / "f.txt").st_mode & 0o777) == "0o640"
    assert oct(os.stat(tmp_path / "d").st_mode & 0o777) == "0o750"


def test_a_normal_run_gives_no_keras_data_warnings(trained_run):
    assert trained_run["summary"]["history"]["val_miou"]  # validation ran
    for message in trained_run["warnings"]:
        assert "ran out of data" not in message and "shuffle=True" not in message, message
