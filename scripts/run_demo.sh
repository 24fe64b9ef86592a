#!/usr/bin/env bash
# The main job end to end on the built-in synthetic Cityscapes-layout dataset:
#   synthetic data -> TFRecords (+ verify) -> train -> evaluate -> export SavedModel -> predict.
# Creates/reuses .venv. Output: demo_out/ (delete it to start afresh; reruns resume/skip work).
# Environment knobs: DEMO_OUT (default demo_out), DEMO_TRAIN (48), DEMO_VAL (8),
# DEMO_HEIGHT/DEMO_WIDTH (256x512), extra training overrides in DEMO_SET (e.g. "train.epochs=2").
# Devices: TensorFlow's choice (a GPU if it finds one, else the CPU); the README's timings are
# for 2 CPU cores. CUDA_VISIBLE_DEVICES= bash scripts/run_demo.sh runs it on the CPU only.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=$("$root/scripts/bootstrap_venv.sh" | tail -n 1)
cd "$root"
export TF_CPP_MIN_LOG_LEVEL=2 PYTHONHASHSEED=0
if [ -z "${CUDA_VISIBLE_DEVICES+set}" ]; then
  echo "devices: any GPU TensorFlow finds, else the CPU (CUDA_VISIBLE_DEVICES= bash $0 for the CPU only)"
elif [ -z "$CUDA_VISIBLE_DEVICES" ]; then
  echo "devices: the CPU only (CUDA_VISIBLE_DEVICES is empty)"
else
  echo "devices: GPU(s) $CUDA_VISIBLE_DEVICES (CUDA_VISIBLE_DEVICES), else the CPU"
fi
out=${DEMO_OUT:-demo_out}
step() { printf '\n==> %s\n' "$*"; }

step "1/6 synthetic Cityscapes-layout dataset -> $out/cityscapes"
if [ ! -f "$out/cityscapes/.complete" ]; then
  "$py" tfrecords_tools/make_synthetic.py "$out/cityscapes" --num-train "${DEMO_TRAIN:-48}" \
    --num-val "${DEMO_VAL:-8}" --height "${DEMO_HEIGHT:-256}" --width "${DEMO_WIDTH:-512}" --seed 0
  touch "$out/cityscapes/.complete"
else
  echo "already there"
fi

step "2/6 convert to TFRecords -> $out/tfrecords (and verify every record)"
"$py" tfrecords_tools/convert_cityscapes.py cityscapes --root "$out/cityscapes" --out "$out/tfrecords" \
  --splits train val --num-shards 4 --workers 2
"$py" tfrecords_tools/convert_cityscapes.py verify --out "$out/tfrecords"

step "3/6 train Gated-SCNN (configs/cpu_demo.yaml) -> $out/run"
set_args=(--set "data.train_pattern=$out/tfrecords/train_fine-*.tfrecord"
          --set "data.val_pattern=$out/tfrecords/val_fine-*.tfrecord" --set "train.model_dir=$out/run")
for kv in ${DEMO_SET:-}; do set_args+=(--set "$kv"); done
"$py" train_keras.py --config configs/cpu_demo.yaml "${set_args[@]}"

step "4/6 evaluate: mIoU, boundary F-score, distance-based IoU -> $out/eval"
"$py" evaluate.py --checkpoint "$out/run" --out "$out/eval"

step "5/6 export a SavedModel for TF Serving -> $out/export/1"
"$py" export_savedmodel.py --checkpoint "$out/run" --export-dir "$out/export" --version 1 --overwrite

step "6/6 predict with the SavedModel on the validation images -> $out/predictions"
"$py" predict.py --model "$out/export" --input "$out/cityscapes/leftImg8bit/val" --recursive --output "$out/predictions"

step "done"
echo "metrics:      $out/eval/metrics.md"
echo "SavedModel:   $out/export/1   (serve it with TF Serving: docs/SERVING.md)"
echo "predictions:  $out/predictions"
echo "TensorBoard:  tensorboard --logdir $out/run/logs"
