"""model.fit training end to end on synthetic data: resume after a kill, CLI errors, epoch length.

The run directory of a finished run, one device against MirroredStrategy and the log lines without a
terminal are checked on docs/TRAINING.md's blocks, which train those runs (tests/test_docs.py, CHECKS)."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import tiny_experiment_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write_yaml(cfg, path):
    from gscnn_tf.config import save_config

    save_config(cfg, str(path))
    return str(path)


def _run_cli(args, env_extra=None, timeout=600):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, os.path.join(REPO, "train_keras.py"), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_killed_run_resumes_from_its_backup_not_from_scratch(synthetic_tfrecords, tmp_path):
    cfg = tiny_experiment_config(synthetic_tfrecords, tmp_path / "run", epochs=2, backup_save_freq=2)
    cfg.train.steps_per_epoch = 5
    cfg.data.val_pattern = ""
    config = _write_yaml(cfg, tmp_path / "resume.yaml")
    pointer = tmp_path / "run" / "backup" / "latest.json"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "train_keras.py"), "--config", config, "--quiet"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 400
    try:
        while not pointer.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert pointer.exists(), "no backup was written before the deadline"
        proc.send_signal(signal.SIGKILL)  # a crash: no clean-up handlers run
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    saved_step = json.loads(pointer.read_text())["global_step"]
    assert 0 < saved_step < 10
    assert not (tmp_path / "run" / "train_summary.json").exists()  # it really died before finishing

    result = _run_cli(["--config", config])
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(rf"resuming from .* at step {saved_step}\b", result.stderr), result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["resumed_from_step"] == saved_step
    assert summary["global_step"] == 10  # the schedule's total, not 10 more steps


@pytest.mark.slow
def test_cli_reports_config_and_data_errors(synthetic_tfrecords, tmp_path):
    cfg = tiny_experiment_config(synthetic_tfrecords, tmp_path / "run")
    config = _write_yaml(cfg, tmp_path / "c.yaml")
    bad_key = _run_cli(["--config", config, "--set", "train.batchsize=2"])
    assert bad_key.returncode == 2 and "unknown key" in bad_key.stderr and "Traceback" not in bad_key.stderr
    no_data = _run_cli(["--config", config, "--set", f"data.train_pattern={tmp_path}/nothing-*.tfrecord"])
    assert no_data.returncode == 2 and "nothing-*.tfrecord" in no_data.stderr and "Traceback" not in no_data.stderr
    no_backup = _run_cli(["--config", config, "--resume"])
    assert no_backup.returncode == 2 and "no backup" in no_backup.stderr


def test_epoch_length_comes_from_the_manifests_without_reading_the_shards(synthetic_tfrecords, tmp_path, monkeypatch):
    """One pass over the training set = records / batch; the converter's manifests give the count
    (the shards were just checked against them), and it equals the records in the files."""
    from gscnn_tf.training import run

    cfg = tiny_experiment_config(synthetic_tfrecords, tmp_path / "run", steps_per_epoch="null")
    counted = run.count_records(cfg.data.train_pattern)  # independent: reads the TFRecord framing
    train_records, val_records = run._check_data(cfg)
    assert (train_records, val_records) == (counted, run.count_records(cfg.data.val_pattern)) == (8, 2)

    def no_reading(pattern):
        raise AssertionError(f"{pattern} was read again just to count its records")

    monkeypatch.setattr(run, "count_records", no_reading)
    assert run._steps_per_epoch(cfg, train_records) == counted // cfg.train.batch_size
    with pytest.raises(AssertionError, match="read again"):
        run._steps_per_epoch(cfg, None)  # shards without manifests are still counted
