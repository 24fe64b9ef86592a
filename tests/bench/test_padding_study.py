"""bench/padding_study.py: one train_keras.py run per setting and seed, with the setting and seed
passed through, and a table whose mean and std are the runs' final val mIoU's."""
import csv
import importlib.util
import os
import statistics
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _script():
    spec = importlib.util.spec_from_file_location("padding_study", os.path.join(ROOT, "bench", "padding_study.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _flag(cmd, name):
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == name]


def test_each_setting_and_seed_trains_once_and_the_table_reports_their_final_val_miou(tmp_path, monkeypatch, capsys):
    study = _script()
    final = {("black", 0): 0.30, ("black", 1): 0.34, ("mean", 0): 0.20, ("mean", 1): 0.28}
    calls = []

    def fake_train(cmd):
        calls.append(cmd)
        sets = dict(kv.split("=", 1) for kv in _flag(cmd, "--set"))
        run = _flag(cmd, "--model-dir")[0]
        os.makedirs(run)
        with open(os.path.join(run, "training_log.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["epoch", "loss", "val_miou"])
            w.writerow([0, 1.0, ""])  # no validation in epoch 1
            w.writerow([1, 0.9, 0.01])  # an earlier validation: not the final one
            w.writerow([2, 0.8, final[(sets["data.pad_color"], int(sets["train.seed"]))]])
        return 0

    monkeypatch.setattr(study.subprocess, "call", fake_train)
    out = tmp_path / "study"
    assert study.main(["--config", "c.yaml", "--out", str(out), "--seeds", "0", "1",
                       "--set", "train.epochs=3"]) == 0
    assert len(calls) == 4
    assert all(c[0] == sys.executable and _flag(c, "--config") == ["c.yaml"] and "train.epochs=3" in _flag(c, "--set")
               for c in calls)
    table = (out / "padding_study.md").read_text()
    assert capsys.readouterr().out.endswith(table)
    rows = {line.split("|")[1].strip(): [c.strip().strip("*") for c in line.split("|")[2:-1]]
            for line in table.splitlines()[2:]}
    for setting in ("black", "mean"):
        values = [100 * final[(setting, s)] for s in (0, 1)]
        assert [float(v) for v in rows[setting][:2]] == pytest.approx(values, abs=0.05)
        assert float(rows[setting][2]) == pytest.approx(statistics.fmean(values), abs=0.05)
        assert float(rows[setting][3]) == pytest.approx(statistics.stdev(values), abs=0.05)


def test_a_failed_run_stops_the_study_with_its_status(tmp_path, monkeypatch):
    study = _script()
    monkeypatch.setattr(study.subprocess, "call", lambda cmd: 2)
    assert study.main(["--config", "c.yaml", "--out", str(tmp_path / "s")]) == 2
    assert not (tmp_path / "s" / "padding_study.md").exists()


def test_an_rgb_setting_is_passed_as_a_list(tmp_path, monkeypatch):
    study = _script()
    seen = []
    monkeypatch.setattr(study.subprocess, "call", lambda cmd: seen.append(_flag(cmd, "--set")) or 1)
    study.main(["--config", "c.yaml", "--out", str(tmp_path), "--settings", "10,20,30"])
    assert "data.pad_color=[10,20,30]" in seen[0]
