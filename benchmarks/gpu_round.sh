#!/bin/bash
# One GPU box, JAX backend (the device image has no TensorFlow): seconds per epoch of vgg_bn with
# augmentation in float32 and mixed_bfloat16, and trials an hour of a small CNN at packing 1, 3 and
# auto. Synthetic CIFAR-shaped data (tests/conftest.py's pickles). Prints the figures; the caller
# appends them to BENCHMARKS.md. Wheels for keras/optuna/... in .whl/ (pip download on the CPU box).
PY=${PY:-python3}; R=$PWD; W=/tmp/gr; mkdir -p $W/studies; OUT=${OUT:-/tmp/out}; mkdir -p $OUT
[ -z "$SKIP_WHL" ] && [ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$R KERAS_BACKEND=${KERAS_BACKEND:-jax} PYTHONUNBUFFERED=1 DATA_OFFLINE=1
export STUDIES_DIR=$W/studies DATA_DIR=$W/datasets ARTIFACTS_DIR=$W/artifacts DATA_CACHE=$W/cache
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; nproc
$PY -c "import sys; sys.path.insert(0, '$R/tests'); from pathlib import Path; from conftest import write_cifar10_pickles; write_cifar10_pickles(Path('$W/datasets'), n_per_batch=2400)" || exit 5
# A. vgg_bn's first warm start (seed 000 Model 3-2: depth 4, batch norm, RMSprop, batch 128, augmentation)
for p in float32 mixed_bfloat16; do
  sed -e "s/^budget:.*/budget: {trials: 1, max_epochs: 4}\npruner: none\ndata: {max_train: 10000, max_val: 2000}\nprecision: $p/" \
      search/studies/vgg_bn.yaml > $W/studies/vgg_$p.yaml
  (cd $W && timeout 150 $PY -m search run vgg_$p --storage journal://$W/a.journal > $OUT/vgg_$p.log 2>&1)
  echo "A $p exit $?: $(grep -o 'epoch [0-9]/4 val_accuracy=[0-9.]* .* [0-9.]*s/epoch' $OUT/vgg_$p.log | sed 's/ best.*loss=[0-9.]*//' | tr '\n' ';')"
done
# B. trials an hour: a small CNN, 2 epochs on 2,000 images, for WINDOW seconds at each packing
WINDOW=${WINDOW:-75}
for mode in 1 3 auto; do
  cat > $W/studies/pack_$mode.yaml <<YAML
description: gpu round, trials an hour at WORKERS_PER_GPU=$mode
architecture: s001_model_1
dataset: cifar10
space:
  learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}
  dense_units: {choices: [128, 256, 512]}
  batch_size: {choices: [64, 128]}
sampler: {name: random, seed: 0}
pruner: none
budget: {trials: 2000, max_epochs: 2, timeout_s: $WINDOW}
data: {max_train: 2000, max_val: 500}
YAML
  workers=$([ "$mode" = auto ] && echo 1 || echo $mode)
  (cd $W && WORKERS_PER_GPU=$mode timeout $((WINDOW + 60)) $PY -m search run pack_$mode --workers $workers \
     --storage journal://$W/b.journal --poll 5 > $OUT/pack_$mode.log 2>&1)
  echo "B packing=$mode exit $?: $(grep -o 'packing.*' $OUT/pack_$mode.log | head -2 | tr '\n' ' ')"
  $PY - $W/b.journal pack_$mode $WINDOW <<'PY'
import sys, optuna
from storage import open_storage
s = optuna.load_study(study_name=sys.argv[2], storage=open_storage(f"journal://{sys.argv[1]}"))
done = [t for t in s.trials if t.state.name == "COMPLETE"]
start = min(t.datetime_start for t in s.trials if t.datetime_start)
end = max(t.datetime_complete for t in done)
span = (end - start).total_seconds()
workers = len({t.user_attrs.get("worker") for t in s.trials})
print(f"B {sys.argv[2]}: {len(done)} complete in {span:.0f} s from the first start, {workers} worker process(es): "
      f"{len(done) * 3600 / span:.0f} trials/hour")
PY
done
