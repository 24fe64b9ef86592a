"""scripts/run_demo.sh, run with a stand-in Python: the devices its steps see, and where it points the user."""
import os
import re
import shutil
import stat
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FAKE_PYTHON = """#!/usr/bin/env bash
# Records what each demo step would run, and the CUDA_VISIBLE_DEVICES it would see.
printf '%s|%s\\n' "${CUDA_VISIBLE_DEVICES-<unset>}" "$*" >> "$FAKE_PYTHON_LOG"
if [ "$1" = tfrecords_tools/make_synthetic.py ]; then mkdir -p "$2"; fi
"""


def _run_demo(tmp_path, cuda):
    """Runs a copy of the script whose bootstrap_venv.sh hands it a stand-in Python."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(os.path.join(REPO, "scripts", "run_demo.sh"), root / "scripts" / "run_demo.sh")
    fake = root / "fake_python"
    fake.write_text(FAKE_PYTHON)
    bootstrap = root / "scripts" / "bootstrap_venv.sh"
    bootstrap.write_text(f"#!/usr/bin/env bash\necho creating nothing\necho {fake}\n")
    for path in (fake, bootstrap):
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "calls.log"
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(FAKE_PYTHON_LOG=str(log), DEMO_OUT=str(tmp_path / "out"))
    if cuda is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda
    proc = subprocess.run(["bash", str(root / "scripts" / "run_demo.sh")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = [line.split("|", 1) for line in log.read_text().splitlines()]
    return proc.stdout, calls


@pytest.mark.parametrize("cuda", [None, "1", ""])
def test_demo_steps_see_the_users_gpus(tmp_path, cuda):
    """Unset stays unset (TensorFlow uses the GPUs it finds); a user's value, empty included, is kept."""
    out, calls = _run_demo(tmp_path, cuda)
    steps = [args.split()[0] for _, args in calls]
    assert steps[:3] == ["tfrecords_tools/make_synthetic.py", "tfrecords_tools/convert_cityscapes.py",
                         "tfrecords_tools/convert_cityscapes.py"]
    assert {"train_keras.py", "evaluate.py", "export_savedmodel.py", "predict.py"} <= set(steps)
    assert {seen for seen, _ in calls} == {"<unset>" if cuda is None else cuda}
    device_lines = [line for line in out.splitlines() if "CUDA_VISIBLE_DEVICES" in line]
    assert len(device_lines) == 1, out  # one line says which devices the demo uses
    if cuda == "":
        assert "CPU" in device_lines[0]


def test_demo_points_at_documents_that_exist(tmp_path):
    out, _ = _run_demo(tmp_path, None)
    assert "docs/SERVING.md" in out
    for path in re.findall(r"\b(?:docs/)?[A-Z_]+\.md\b", out):
        assert os.path.isfile(os.path.join(REPO, path)), path
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        headings = {line.lstrip("#").strip() for line in f if line.startswith("#")}
    for heading in re.findall(r"README, '([^']+)'", out):
        assert heading in headings, heading
