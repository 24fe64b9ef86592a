"""TensorFlow-backend speed: dilated convs, training step, inference, input pipeline; old vs new.

Keras' TensorFlow backend, on whatever TensorFlow sees (CPU here; a GPU where present).
Every case runs in its own process with ``--threads`` intra- and inter-op threads. Inside
a case the **old** path (Keras' dilated convolution: ``space_to_batch`` + an undilated
conv, ``gscnn_tf.layers.dilated_conv.set_native_dilated_conv(False)``) and the **new**
path (TensorFlow's native dilated kernels) are two ``tf.function`` traces of the same model
with the same weights; their repetitions alternate (old, new, old, new, ...), so load from
other processes hits both alike. Ratios are medians of the per-pair ratios.

Cases (``--cases``; ``MODEL`` is ``r50`` = ResNet-50 OS8, 19 classes, or ``demo`` =
``configs/cpu_demo.yaml``'s MobileNetV2 x0.35 model):

* ``conv-r{RATE}``: one ASPP atrous conv on its real shape, forward + gradients (input and
  kernel): 2048 -> 256 channels, 3x3, on the stride-8 map of a 512x512 crop (1x64x64).
* ``train-{gscnn,deeplab}-MODEL``: the ``train_step`` a compiled ``GatedSCNN`` inherits from
  Keras (what ``model.fit`` runs: forward, ``GatedSCNN.compute_loss``'s four terms, backward,
  SGD with coupled weight decay); r50: 2 x 256x512,
  demo: 4 x 128x256 (the demo's batch and crop).
* ``infer-{gscnn,deeplab}-MODEL``: the inference network, r50: 1 x 512x1024, demo: 1 x 256x512.
* ``parts-MODEL``: a profile of the (new) Gated-SCNN training step by component: the
  whole step, the network forward, forward + backward, each loss term with its gradient,
  the Canny layer (:func:`run_parts`).
* ``input-MODEL``: the training input pipeline (``bench/bench_input_pipeline.py``'s
  records and timer, full pipeline) at that case's batch and crop: the images/s the
  data side can deliver next to the step's.

Append ``-xla`` to a train/infer case for ``jit_compile=True``. FLOPs are counted from
the traced graph (the new path's): multiply-adds x 2 of every Conv2D, its two backprop
ops, depthwise convs and matmuls, from their static shapes, counting only the taps that
read image pixels (a dilated 'same' conv's taps in the zero padding are skipped by oneDNN
and by the tap-wise kernel gradient); elementwise ops (BatchNorm, activations, losses) are
not counted. The matmul peak is measured in each case's process with the case's threads, inside the
same old/new rotation (best of three float32 4096x4096 matmuls per round, median over the
rounds), so it sees the same machine load as the timed calls and "of peak" compares like
with like.

    python bench/bench_train_step.py --reps 2 --out bench/results/train_step_cpu.jsonl   # default cases
    python bench/bench_train_step.py --reps 2 --cases extra --out bench/results/train_step_cpu.jsonl
    python bench/bench_train_step.py --cases conv-r36 train-gscnn-demo --threads 2 --reps 3
    python bench/bench_train_step.py --table bench/results/train_step_cpu.jsonl
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CASES = (  # about 13 minutes on a shared 2-core CPU with --reps 2; EXTRA_CASES about as long
    "conv-r12:2", "conv-r36:2", "conv-r12:1", "conv-r36:1",
    "train-gscnn-r50:2", "train-gscnn-r50:1", "infer-gscnn-r50:1",
)
EXTRA_CASES = (
    "train-deeplab-r50:2", "infer-deeplab-r50:1", "parts-r50:2", "input-r50:2",
    "train-gscnn-demo:2", "train-gscnn-demo-xla:2", "infer-gscnn-demo:2", "infer-gscnn-demo-xla:2", "input-demo:2",
)  # train-gscnn-r50-xla works too, but its two XLA compilations took over 15 minutes on 2 cores
SIZES = {  # model -> (train batch, train H, W, inference H, W)
    "r50": (2, 256, 512, 512, 1024),
    "demo": (4, 128, 256, 256, 512),
}
CONV_FLOP_OPS = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter")


# --------------------------------------------------------------------------- graph FLOPs

def _taps_in_image(op, in_hw, out_hw, kernel_hw) -> int:
    """Sum over kernel taps of the output pixels whose tap reads an image pixel.

    A stride-1 'SAME' conv reads zero padding at the border; at the ASPP's rates most taps of
    most pixels do (rate 36 on a 32x64 map: 21 % of the dense count is real work), and
    oneDNN skips those. Other convs: the dense count.
    """
    strides = list(op.get_attr("strides"))
    dilations = list(op.get_attr("dilations"))
    padding = op.get_attr("padding").decode()
    dense = out_hw[0] * out_hw[1] * kernel_hw[0] * kernel_hw[1]
    if padding != "SAME" or strides != [1, 1, 1, 1]:
        return dense
    total = 1
    for size_in, size_out, k, rate in zip(in_hw, out_hw, kernel_hw, dilations[1:3]):
        top = ((k - 1) * rate) // 2
        total *= sum(max(0, min(size_out, size_in - (i * rate - top)) - max(0, top - i * rate)) for i in range(k))
    return total


def graph_flops(graph) -> int:
    """2 x multiply-adds of the convolutions and matmuls in ``graph`` (static shapes).

    Conv2D: 2 * batch * C_in * C_out * (taps that read image pixels, see
    :func:`_taps_in_image`); its backprop ops do the same work, so they count the same.
    Depthwise: the same with C_in * C_out replaced by the channels. Matmuls: 2 * M * N * K.
    Functions called from the graph (``PartitionedCall``) are not entered; :func:`main`
    records the count of such calls so a reader knows whether anything was missed.
    """
    total = 0
    for op in graph.get_operations():
        try:
            if op.type in CONV_FLOP_OPS or op.type == "DepthwiseConv2dNative":
                # (input, kernel, output) shapes of the forward conv this op belongs to.
                if op.type in ("Conv2D", "DepthwiseConv2dNative"):
                    x, kernel, out = op.inputs[0].shape, op.inputs[1].shape, op.outputs[0].shape
                elif op.type == "Conv2DBackpropInput":
                    x, kernel, out = op.outputs[0].shape, op.inputs[1].shape, op.inputs[2].shape
                else:
                    x, kernel, out = op.inputs[0].shape, op.outputs[0].shape, op.inputs[2].shape
                taps = _taps_in_image(op, x[1:3], out[1:3], kernel[0:2])
                # Multiply-adds per tap and output pixel: C_in * C_out, or the channels (depthwise).
                channels = kernel[2] * out[3] if op.type != "DepthwiseConv2dNative" else out[3]
                total += 2 * out[0] * taps * channels
            elif op.type in ("MatMul", "BatchMatMulV2", "BatchMatMulV3"):
                a = op.inputs[0].shape
                ta = op.get_attr("transpose_a") if op.type == "MatMul" else op.get_attr("adj_x")
                k = a[-2] if ta else a[-1]
                total += 2 * op.outputs[0].shape.num_elements() * k
        except (TypeError, ValueError):  # an unknown dimension: not countable
            continue
    return int(total)


def _function_calls(graph) -> int:
    return sum(op.type in ("PartitionedCall", "StatefulPartitionedCall") for op in graph.get_operations())


# --------------------------------------------------------------------------- timing helpers

PEAK_N = 4096
PEAK_FLOP = 2 * PEAK_N ** 3


def _matmul_peak_call(repeats=3):
    """A callable running float32 4096x4096 matmuls; returns the best one's seconds."""
    import tensorflow as tf

    a = tf.random.normal((PEAK_N, PEAK_N))
    b = tf.random.normal((PEAK_N, PEAK_N))
    mm = tf.function(lambda: tf.reduce_sum(tf.matmul(a, b)))
    mm().numpy()

    def run():
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            mm().numpy()
            best = min(best, time.perf_counter() - t)
        return best

    return run


def interleaved(fns: dict, reps: int) -> dict:
    """Times each callable ``reps`` times, alternating between them; seconds per call.

    A callable that returns a float reports its own time (the matmul peak: best of a few).
    """
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t = time.perf_counter()
            out = fn()
            times[name].append(out if isinstance(out, float) else time.perf_counter() - t)
    return times


def _sync(result):
    """Waits for a result (nested structure of tensors) by reading one scalar from each."""
    import tensorflow as tf

    for t in tf.nest.flatten(result):
        if hasattr(t, "numpy"):
            t.numpy() if t.shape.rank == 0 else tf.reduce_sum(t[..., :1]).numpy()


def _old_and_new(make_fn, reps: int, extra=None) -> dict:
    """Traces ``make_fn()`` once per path (the switch is read at trace time), warms up, times.

    ``extra``: more variants ``{name: make_fn}``, traced with the native path on and timed in
    the same rotation.
    """
    from gscnn_tf.layers.dilated_conv import set_native_dilated_conv

    variants = [("old", False, make_fn), ("new", True, make_fn)]
    variants += [(name, True, make) for name, make in (extra or {}).items()]
    fns, first = {}, {}
    for name, native, make in variants:
        set_native_dilated_conv(native)
        fn, call = make()
        t = time.perf_counter()
        _sync(call())  # trace (+ compile) + first call
        first[name] = time.perf_counter() - t
        fns[name] = (fn, call)
    set_native_dilated_conv(True)
    for name in fns:  # a second untimed call each: allocator and caches warm
        _sync(fns[name][1]())
    calls = {name: (lambda c=fns[name][1]: _sync(c())) for name in fns}
    # The matmul peak is measured in the same rotation, so it sees the same machine load.
    calls["matmul"] = _matmul_peak_call()
    times = interleaved(calls, reps)
    peak = [PEAK_FLOP / t / 1e9 for t in times.pop("matmul")]
    return {"first_s": first, "times": times, "fn_new": fns["new"][0], "peak_gflops": peak}


# --------------------------------------------------------------------------- cases

def _model_config(model: str, shape_stream: bool):
    from gscnn_tf.config import ModelConfig, load_config

    if model == "demo":
        cfg = load_config(os.path.join(ROOT, "configs", "cpu_demo.yaml")).model
        cfg.shape_stream = shape_stream
        cfg.sync_batchnorm = False
        return cfg
    return ModelConfig(backbone="resnet50", output_stride=8, num_classes=19, pretrained=None,
                       shape_stream=shape_stream, sync_batchnorm=False)


def _labels(batch, height, width, seed=0):

    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from bench_model_gpu import _street_like_labels

    return _street_like_labels(batch, height, width, seed)


def run_conv(rate: int, reps: int) -> dict:
    import numpy as np
    import tensorflow as tf

    from gscnn_tf.layers import dilated_conv

    x = tf.constant(np.random.default_rng(0).standard_normal((1, 64, 64, 2048)).astype("float32"))
    layer = dilated_conv.Conv2D(256, 3, padding="same", dilation_rate=rate, use_bias=False)
    layer.build(x.shape)

    def make(conv=None):
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x) if conv is None else conv(x, layer.kernel)
                loss = tf.reduce_sum(y * y)
            return tape.gradient(loss, [x, layer.kernel])

        return step, step

    # The native forward with TensorFlow's own kernel gradient (Conv2DBackpropFilter with
    # dilation): the step between old and new, to show what the tap-wise gradient adds.
    tf_grad = lambda t, k: tf.nn.conv2d(t, k, 1, "SAME", dilations=rate)  # noqa: E731
    res = _old_and_new(make, reps, extra={"native_tf_grad": lambda: make(tf_grad)})
    times = res["times"]
    extra = {"native_tf_grad_s": round(statistics.median(times["native_tf_grad"]), 4),
             "speedup_native_tf_grad": round(statistics.median(
                 o / n for o, n in zip(times["old"], times["native_tf_grad"])), 3)}
    graph = res["fn_new"].get_concrete_function().graph
    return {"res": res, "flops": graph_flops(graph), "calls": _function_calls(graph), "shape": "1x64x64x2048->256",
            **extra}


def _compile_for_training(model, rng, batch: int, h: int, w: int) -> tuple:
    """Compiles ``model`` with the paper's optimizer (built); returns a batch ``(x, y)``."""
    import tensorflow as tf

    from gscnn_tf.training.optimizer import CoupledWeightDecaySGD

    x = tf.constant(rng.uniform(0, 255, (batch, h, w, 3)).astype("float32"))
    label, boundary = _labels(batch, h, w)
    y = {"label": tf.constant(label), "boundary": tf.constant(boundary)}
    model.compile(optimizer=CoupledWeightDecaySGD(learning_rate=1e-3, momentum=0.9, l2_weight_decay=1e-4), seed=0)
    model.optimizer.build(model.trainable_variables)
    return x, y


def run_model(kind: str, arch: str, model: str, xla: bool, reps: int) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from gscnn_tf.model import GatedSCNN

    cfg = _model_config(model, arch == "gscnn")
    batch, th, tw, ih, iw = SIZES[model]
    keras.utils.set_random_seed(0)
    network = GatedSCNN(cfg)
    rng = np.random.default_rng(0)
    if kind == "infer":
        batch, h, w = 1, ih, iw
        x = tf.constant(rng.uniform(0, 255, (1, h, w, 3)).astype("float32"))

        def make():
            fn = tf.function(lambda image: network(image, training=False), jit_compile=xla)
            return fn, lambda: fn(x)

        res = _old_and_new(make, reps)
        graph = res["fn_new"].get_concrete_function(x).graph
    else:
        h, w = th, tw
        x, y = _compile_for_training(network, rng, batch, h, w)
        trainer = network

        def make():
            fn = tf.function(lambda data: trainer.train_step(data), jit_compile=xla)
            return fn, lambda: fn((x, y))

        res = _old_and_new(make, reps)
        graph = res["fn_new"].get_concrete_function((x, y)).graph
    return {"res": res, "flops": graph_flops(graph), "calls": _function_calls(graph),
            "params": int(network.count_params()), "batch": batch, "height": h, "width": w}


def run_parts(model: str, reps: int) -> dict:
    """Profile of the new path's Gated-SCNN training step, one component at a time (seconds).

    step: the whole ``train_step``; forward: the network in training mode; forward+backward:
    the network's gradient of a stand-in loss (sum of outputs); loss-*: each loss term's
    value and gradient with respect to fixed network outputs; canny: the Canny layer.
    """
    import keras
    import numpy as np
    import tensorflow as tf

    from gscnn_tf.config import LossConfig
    from gscnn_tf.layers.canny import CannyEdges
    from gscnn_tf.losses import GSCNNLoss
    from gscnn_tf.model import GatedSCNN

    cfg = _model_config(model, True)
    batch, h, w, _, _ = SIZES[model]
    keras.utils.set_random_seed(0)
    network = GatedSCNN(cfg)
    rng = np.random.default_rng(0)
    x, y = _compile_for_training(network, rng, batch, h, w)
    trainer = network
    outputs = {k: tf.constant(v) for k, v in network(x, training=False).items()}
    loss = GSCNNLoss(LossConfig(), dual_task_seed=0)
    variables = network.trainable_variables

    def forward_backward():
        with tf.GradientTape() as tape:
            out = network(x, training=True)
            total = tf.add_n([tf.reduce_sum(v) for v in out.values()])
        return tape.gradient(total, variables)

    def loss_grad(fn):
        def run():
            with tf.GradientTape() as tape:
                tape.watch(outputs)
                value = fn(y, outputs)
            return value, tape.gradient(value, outputs)

        return run

    canny = next((layer for layer in network.layers if isinstance(layer, CannyEdges)), None)
    parts = {
        "step": lambda: trainer.train_step((x, y)),
        "forward": lambda: network(x, training=True),
        "forward+backward": forward_backward,
        "loss-all (GSCNNLoss.terms, one CE)": loss_grad(lambda t, o: loss.total(loss.terms(t, o))),
        # Before: every term computes its own CE (what GSCNNLoss.terms did until the CE was shared).
        "loss-all, each term its own CE (before)": loss_grad(lambda t, o: loss.total({
            "seg": loss.seg_loss.call(t, o), "edge_bce": loss.edge_loss.call(t, o),
            "attention": loss.attention_loss.call(t, o), "dual_task": loss.dual_task_loss.call(t, o)})),
        "loss-seg": loss_grad(loss.seg_loss),
        "loss-attention": loss_grad(loss.attention_loss),
        "loss-edge_bce": loss_grad(loss.edge_loss),
        "loss-dual_task": loss_grad(loss.dual_task_loss),
    }
    if canny is not None:
        parts["canny"] = lambda: canny(x)
    fns = {name: tf.function(fn) for name, fn in parts.items()}
    for fn in fns.values():
        _sync(fn())
        _sync(fn())
    times = interleaved({name: (lambda f=fn: _sync(f())) for name, fn in fns.items()}, reps)
    return {"parts_s": {name: round(statistics.median(t), 4) for name, t in times.items()},
            "batch": batch, "height": h, "width": w}


def run_input(model: str, threads: int) -> dict:
    import tensorflow as tf

    sys.path.insert(0, os.path.join(ROOT, "bench"))
    from bench_input_pipeline import time_dataset, write_records

    from gscnn_tf.config import DataConfig
    from gscnn_tf.data import pipeline

    batch, th, tw, _, _ = SIZES[model]
    # Cityscapes' aspect ratio at twice the crop, so random scaling and cropping both act.
    with tempfile.TemporaryDirectory(prefix="bench_step_input_") as root:
        pattern = write_records(root, 16, 2 * th, 2 * tw, 4)
        cfg = DataConfig(train_pattern=pattern, crop_size=[th, tw], shuffle_buffer=16)
        options = tf.data.Options()
        options.threading.private_threadpool_size = threads
        ds = pipeline.build_train_dataset(cfg, batch, seed=0, repeat=True)
        ds = ds.with_options(options)
        rates = [time_dataset(ds, batch, 2, 16 * batch)[0] for _ in range(3)]
    return {"images_per_s": max(rates), "batch": batch, "height": th, "width": tw}


def run_case(case: str, threads: int, reps: int) -> dict:
    """Runs one case in this process and returns its record (parent: one process per case)."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    sys.path.insert(0, ROOT)
    devices = tf.config.list_physical_devices("GPU")
    record = {
        "case": case, "threads": threads, "tf": tf.__version__,
        "device": devices[0].name if devices else f"CPU ({os.cpu_count()} cores, {platform.machine()})",
    }
    parts = case.split("-")
    kind = parts[0]
    if kind == "input":
        record.update(run_input(parts[1], threads))
        return record
    if kind == "parts":
        record.update(run_parts(parts[1], reps))
        return record
    if kind == "conv":
        out = run_conv(int(parts[1][1:]), reps)
    else:
        arch, model, xla = parts[1], parts[2], parts[-1] == "xla"
        record.update(arch=arch, model=model, xla=xla)
        out = run_model(kind, arch, model, xla, reps)
    res = out.pop("res")
    record.update(out)
    # The median matmul rate of the rotation (same load as the timed calls); also the best.
    record["peak_gflops"] = round(statistics.median(res["peak_gflops"]), 1)
    record["peak_gflops_best"] = round(max(res["peak_gflops"]), 1)
    times = res["times"]
    med = {k: statistics.median(v) for k, v in times.items() if k in ("old", "new")}
    pair = statistics.median(o / n for o, n in zip(times["old"], times["new"]))
    record.update(
        kind=kind, reps=reps, first_s={k: round(v, 2) for k, v in res["first_s"].items()},
        old_s=round(med["old"], 4), new_s=round(med["new"], 4), speedup=round(pair, 3),
        old_times=[round(t, 4) for t in times["old"]], new_times=[round(t, 4) for t in times["new"]],
        gflops=round(record["flops"] / 1e9, 2),
        achieved_gflops=round(record["flops"] / med["new"] / 1e9, 1),
    )
    record["of_peak"] = round(record["achieved_gflops"] / record["peak_gflops"], 3)
    if kind in ("train", "infer"):
        record["images_per_s_old"] = round(record["batch"] / med["old"], 3)
        record["images_per_s_new"] = round(record["batch"] / med["new"], 3)
    return record


# --------------------------------------------------------------------------- parent

def _run_in_subprocess(case: str, threads: int, reps: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", case, "--threads", str(threads), "--reps", str(reps)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"case": case, "threads": threads, "error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(records) -> str:
    lines = [
        "| case | threads | XLA | shape | old s | new s | new / old speed-up | images/s (old -> new) | GFLOP "
        "| of matmul peak (GFLOP/s) |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    inputs = []
    for r in records:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['threads']} | | failed | | | | | | |")
            continue
        if r["case"].startswith(("input", "parts")):
            inputs.append(r)
            continue
        shape = r.get("shape") or f"{r['batch']}x{r['height']}x{r['width']}"
        ips = (f"{r['images_per_s_old']:.2f} -> {r['images_per_s_new']:.2f}" if "images_per_s_new" in r else "")
        lines.append(
            f"| {r['case']} | {r['threads']} | {'on' if r.get('xla') else 'off'} | {shape} | {r['old_s']:.3f} | "
            f"{r['new_s']:.3f} | **{r['speedup']:.2f}x** | {ips} | {r['gflops']:.1f} | "
            f"{100 * r['of_peak']:.0f} % ({r['achieved_gflops']:.0f} of {r['peak_gflops']:.0f}) |"
        )
    for r in records:
        if "speedup_native_tf_grad" in r:
            lines.append(f"\n{r['case']} ({r['threads']} threads): native forward + TensorFlow's own kernel gradient "
                         f"{r['native_tf_grad_s']:.3f} s, {r['speedup_native_tf_grad']:.2f}x over old; the tap-wise "
                         f"kernel gradient makes it {r['speedup']:.2f}x.")
    for r in inputs:
        if "parts_s" in r:
            step = r["parts_s"]["step"]
            lines.append(f"\nProfile ({r['case']}, {r['batch']}x{r['height']}x{r['width']}, {r['threads']} threads):\n")
            lines.append("| component | s | of the step |\n|---|---:|---:|")
            lines.extend(f"| {k} | {v:.3f} | {100 * v / step:.1f} % |" for k, v in r["parts_s"].items())
            continue
        lines.append(f"\nInput pipeline ({r['case']}, batch {r['batch']}, crop {r['height']}x{r['width']}, "
                     f"{r['threads']} tf.data threads): {r['images_per_s']:.1f} images/s")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES),
                        help="cases, each CASE or CASE:THREADS (default: the dilated convs and the ResNet-50 "
                             "Gated-SCNN step and inference; 'extra': the rest; see above)")
    parser.add_argument("--threads", type=int, default=2, help="threads of cases given without :THREADS")
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions per path (alternating old/new)")
    parser.add_argument("--out", help="append one JSON record per case to this .jsonl file")
    parser.add_argument("--table", metavar="JSONL", help="only print the Markdown table of a results file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.table:
        with open(args.table) as f:
            print(table([json.loads(line) for line in f if line.strip()]))
        return 0
    if args.worker:
        print(json.dumps(run_case(args.worker, args.threads, args.reps)))
        return 0

    if args.cases == ["extra"]:
        args.cases = list(EXTRA_CASES)
    records = []
    start = time.perf_counter()
    for i, spec in enumerate(args.cases):
        case, _, threads = spec.partition(":")
        threads = int(threads or args.threads)
        t = time.perf_counter()
        print(f"[{i + 1}/{len(args.cases)}] {case}, {threads} thread(s) ...", file=sys.stderr, flush=True)
        record = _run_in_subprocess(case, threads, args.reps)
        record["load_avg_1min"] = round(os.getloadavg()[0], 2)
        records.append(record)
        summary = record.get("error", "").strip().splitlines()[-1:] or [
            f"speed-up {record['speedup']}x" if "speedup" in record else
            str(record.get("parts_s") or f"{record.get('images_per_s', 0):.1f} images/s")]
        print(f"    {time.perf_counter() - t:.0f} s: {summary[0]}", file=sys.stderr, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(record) + "\n")
    print(f"total {time.perf_counter() - start:.0f} s", file=sys.stderr)
    print(table(records))
    return 1 if any("error" in r for r in records) else 0


if __name__ == "__main__":
    raise SystemExit(main())
