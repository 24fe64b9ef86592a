"""Gated-SCNN vs DeepLabV3+ on an accelerator: training-step and inference speed, peak memory.

Runs on Keras' **JAX** backend, because the layers and losses are backend-neutral
``keras.ops`` code and the GPU machines this project can borrow have JAX but no TensorFlow
(``scripts/cross_backend_check.py`` shows the JAX model computes what the TF model does).
Every case runs in its own process. Memory is XLA's plan for one compiled call (arguments,
outputs and temporaries), read from the compiled executable.

Cases (``--cases``, default all), all ResNet-50 OS8 unless ``--backbone`` says otherwise:

* ``train-{gscnn,deeplab}-{float32,mixed_bfloat16}``: one full training step at the paper's
  per-GPU load (batch 2 of 800x800 crops): forward, the four loss terms (only the
  segmentation CE for the DeepLabV3+ baseline), backward, SGD with coupled weight decay.
* ``infer-{gscnn,deeplab}-{float32,mixed_bfloat16}``: inference on one 1024x2048 image
  (Cityscapes' full resolution), outputs seg_logits and edge.
* ``canny-float32``: the in-graph Canny layer alone on one 1024x2048 image.

float32 here is JAX's default precision (TF32 tensor-core convolutions on Ampere and newer).

    KERAS_BACKEND=jax python bench/bench_model_gpu.py --out results.jsonl   # all cases
    python bench/bench_model_gpu.py --table results.jsonl                    # Markdown table
    # a CPU smoke run of the code path:
    python bench/bench_model_gpu.py --backbone mobilenetv2 --train-size 64 64 \
        --infer-size 64 128 --steps 2 --cases train-gscnn-float32
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHS = ("gscnn", "deeplab")
POLICIES = ("float32", "mixed_bfloat16")
ALL_CASES = (
    [f"train-{a}-{p}" for p in POLICIES for a in ARCHS]
    + [f"infer-{a}-{p}" for p in POLICIES for a in ARCHS]
    + ["canny-float32"]
)


def _street_like_labels(batch, height, width, seed=0):
    """Blocky train-id maps with a band of ignore pixels: a realistic boundary density."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    labels = []
    for _ in range(batch):
        cell_h, cell_w = rng.integers(24, 64, size=2)
        label = ((yy // cell_h) * 7 + (xx // cell_w) + rng.integers(0, 19)) % 19
        label[: height // 16] = 255
        labels.append(label)
    label = np.stack(labels).astype("int32")
    # GT boundaries (radius-1 approximation is enough for timing): a 4-neighbour differs.
    boundary = np.zeros(label.shape, bool)
    boundary[:, 1:] |= label[:, 1:] != label[:, :-1]
    boundary[:, :, 1:] |= label[:, :, 1:] != label[:, :, :-1]
    boundary &= label != 255
    return label, boundary.astype("float32")


def _compile(jitted, *args):
    """Ahead-of-time compilation: (compiled callable, seconds, XLA's memory plan in bytes).

    The plan (arguments + outputs + temporaries - aliased) is what one call needs on the
    device; the allocator's runtime peak also counts cuDNN autotuning scratch from the
    compilation and would not compare like with like.
    """
    start = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    seconds = time.perf_counter() - start
    plan = compiled.memory_analysis()
    planned = None
    if plan is not None:
        planned = (plan.argument_size_in_bytes + plan.output_size_in_bytes + plan.temp_size_in_bytes
                   - plan.alias_size_in_bytes)
    return compiled, seconds, planned


def _time_calls(fn, steps, warmup=3):
    """(first-call seconds, per-call seconds after warm-up)."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, times


def run_case(case: str, args) -> dict:
    """Runs one case in this process (KERAS_BACKEND=jax) and returns its result record."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import jax
    import keras
    import numpy as np

    if keras.backend.backend() != "jax":
        raise SystemExit(f"bench_model_gpu: needs KERAS_BACKEND=jax, got {keras.backend.backend()}")
    sys.path.insert(0, ROOT)
    from gscnn_tf.config import ModelConfig

    parts = case.split("-")  # kind-arch-policy, or canny-policy
    kind, policy = parts[0], parts[-1]
    arch = parts[1] if len(parts) == 3 else None
    keras.config.set_dtype_policy(policy)
    device = jax.devices()[0]
    rng = np.random.default_rng(0)
    record = dict(case=case, kind=kind, arch=arch, policy=policy, backbone=args.backbone, device=device.device_kind)

    if kind == "canny":
        from gscnn_tf.layers.canny import CannyEdges

        h, w = args.infer_size
        layer = CannyEdges(10, 100)
        x = jax.device_put(np.clip(rng.normal(128, 60, (1, h, w, 3)), 0, 255).astype("float32"))
        fn, compile_s, planned = _compile(jax.jit(lambda image: layer(image)), x)
        first, times = _time_calls(lambda: fn(x).block_until_ready(), args.steps)
        record.update(batch=1, height=h, width=w)
    else:
        from gscnn_tf.model import GatedSCNN

        cfg = ModelConfig(
            backbone=args.backbone, output_stride=8, num_classes=19, shape_stream=(arch == "gscnn"),
            sync_batchnorm=False, mobilenet_alpha=1.0,
        )
        model = GatedSCNN(cfg)
        record["params"] = int(model.count_params())
        tv = [v.value for v in model.trainable_variables]
        ntv = [v.value for v in model.non_trainable_variables]
        if kind == "infer":
            h, w = args.infer_size
            batch = 1
            x = jax.device_put(rng.uniform(0, 255, (batch, h, w, 3)).astype("float32"))

            @jax.jit
            def infer(tv, ntv, image):
                outputs, _ = model.stateless_call(tv, ntv, image, training=False)
                return outputs["seg_logits"], outputs["edge"]

            infer, compile_s, planned = _compile(infer, tv, ntv, x)
            first, times = _time_calls(lambda: jax.block_until_ready(infer(tv, ntv, x)), args.steps)
        else:
            from gscnn_tf.losses import GSCNNLoss
            from gscnn_tf.training.optimizer import CoupledWeightDecaySGD

            h, w = args.train_size
            batch = args.batch_size
            x = jax.device_put(rng.uniform(0, 255, (batch, h, w, 3)).astype("float32"))
            label, boundary = _street_like_labels(batch, h, w)
            y = {"label": jax.device_put(label), "boundary": jax.device_put(boundary)}
            loss_fn = GSCNNLoss(use_edge_terms=(arch == "gscnn"), dual_task_seed=0)
            seed_var = loss_fn.dual_task_loss.seed_generator.state
            optimizer = CoupledWeightDecaySGD(learning_rate=0.01, momentum=0.9, l2_weight_decay=1e-4)
            optimizer.build(model.trainable_variables)
            ov = [v.value for v in optimizer.variables]

            def loss_and_state(tv, ntv, seed, image, targets):
                # The dual-task term's Gumbel noise draws from a SeedGenerator: thread its state.
                with keras.StatelessScope(state_mapping=[(seed_var, seed)]) as scope:
                    outputs, ntv = model.stateless_call(tv, ntv, image, training=True)
                    loss = loss_fn(targets, outputs)
                    seed = scope.get_current_value(seed_var)
                return loss, (ntv, seed)

            grad_fn = jax.value_and_grad(loss_and_state, has_aux=True)

            @jax.jit
            def train_step(state, image, targets):
                tv, ntv, ov, seed = state
                (loss, (ntv, seed)), grads = grad_fn(tv, ntv, seed, image, targets)
                tv, ov = optimizer.stateless_apply(ov, grads, tv)
                return loss, (tv, ntv, ov, seed)

            state = [(tv, ntv, ov, seed_var.value)]
            train_step, compile_s, planned = _compile(train_step, state[0], x, y)
            losses = []

            def step():
                loss, state[0] = train_step(state[0], x, y)
                losses.append(float(loss))  # float() waits for the step to finish

            first, times = _time_calls(step, args.steps)
            record.update(first_loss=losses[0], last_loss=losses[-1], finite=bool(np.all(np.isfinite(losses))))
        record.update(batch=batch, height=h, width=w)

    stats = device.memory_stats() or {}
    median = statistics.median(times)
    record.update(
        compile_s=round(compile_s, 2),
        first_call_s=round(first, 3),
        median_ms=round(1000 * median, 2),
        min_ms=round(1000 * min(times), 2),
        images_per_s=round(record["batch"] / median, 2),
        xla_memory_gib=round(planned / 2**30, 3) if planned is not None else None,
        runtime_peak_gib=round(stats["peak_bytes_in_use"] / 2**30, 2) if "peak_bytes_in_use" in stats else None,
        steps=len(times),
    )
    return record


def table(records) -> str:
    """Markdown table with each Gated-SCNN case's ratio to the DeepLabV3+ case of the same kind/policy."""
    by_case = {r["case"]: r for r in records}
    lines = [
        "| case | input | median ms | images/s | XLA memory plan GiB | vs DeepLabV3+ (time, memory) | compile s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in records:
        ratio = ""
        if r["arch"] == "gscnn":
            base = by_case.get(r["case"].replace("gscnn", "deeplab"))
            if base:
                ratio = f"{r['median_ms'] / base['median_ms']:.2f}x"
                if r.get("xla_memory_gib") and base.get("xla_memory_gib"):
                    ratio += f", {r['xla_memory_gib'] / base['xla_memory_gib']:.2f}x"
        elif r["kind"] == "canny":
            infer = by_case.get("infer-gscnn-float32")
            if infer:
                ratio = f"{100 * r['median_ms'] / infer['median_ms']:.1f} % of GSCNN inference"
        lines.append(
            f"| {r['case']} | {r['batch']}x{r['height']}x{r['width']} | {r['median_ms']} | {r['images_per_s']} "
            f"| {r['xla_memory_gib']} | {ratio} | {r['compile_s']} |"
        )
    device = records[0]["device"] if records else "?"
    return f"Device: {device}; backbone {records[0]['backbone'] if records else '?'} OS8\n\n" + "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(ALL_CASES), choices=ALL_CASES, help="which cases to run")
    parser.add_argument("--backbone", default="resnet50", choices=("resnet50", "resnet101", "mobilenetv2"))
    parser.add_argument("--batch-size", type=int, default=2, help="training batch (paper: 2 per GPU)")
    parser.add_argument("--train-size", type=int, nargs=2, default=(800, 800), metavar=("H", "W"))
    parser.add_argument("--infer-size", type=int, nargs=2, default=(1024, 2048), metavar=("H", "W"))
    parser.add_argument("--steps", type=int, default=20, help="timed calls per case (after 3 warm-up calls)")
    parser.add_argument("--out", help="append one JSON line per case to this file")
    parser.add_argument("--table", metavar="JSONL", help="only print the Markdown table of an --out file")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
    args = parser.parse_args(argv)

    if args.table:
        with open(args.table) as f:
            print(table([json.loads(line) for line in f if line.strip()]))
        return 0
    if args.case:
        print("RESULT " + json.dumps(run_case(args.case, args)), flush=True)
        return 0

    records, failed = [], []
    passthrough = ["--backbone", args.backbone, "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                   "--train-size", *map(str, args.train_size), "--infer-size", *map(str, args.infer_size)]
    # No up-front pool: JAX otherwise reserves 75 % of GPU memory, and peak figures need the real use.
    env = dict(os.environ, KERAS_BACKEND="jax", XLA_PYTHON_CLIENT_PREALLOCATE="false")
    for case in args.cases:
        print(f"[bench] {case} ...", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--case", case, *passthrough],
                              env=env, capture_output=True, text=True)
        result = [line[7:] for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode != 0 or not result:
            failed.append(case)
            print(f"[bench] {case} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}", file=sys.stderr)
            continue
        record = json.loads(result[0])
        records.append(record)
        print(f"[bench] {case}: {record}", file=sys.stderr, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(record) + "\n")
    if records:
        print(table(records))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
