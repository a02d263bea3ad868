#!/usr/bin/env bash
# All GPU checks and benchmarks in one run (about 9 minutes on an H100), quick sizes first.
# Usage (from the repository root): OUT=/some/dir bash benchmarks/gpu_run.sh
# SKIP_TESTS=1 skips the exactness tests (part 1).
# Every part has its own time limit and writes its results as it goes.
set -u
OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
export PYTHONPATH=.
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.5  # leave room for the PyTorch side by side
PY=${PYTHON:-python}
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import jax, jaxlib, flax, optax; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax', flax.__version__, 'optax', optax.__version__); print(jax.devices())"
  $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
} 2>&1 | tee "$OUT/environment.txt"

# 1. Exactness on the GPU: finite differences, closed forms, jvp == autodiff.
if [ -n "${SKIP_TESTS:-}" ]; then
  echo "exactness tests skipped (SKIP_TESTS set)" | tee "$OUT/tests.txt"
elif $PY -c "import pytest" 2>/dev/null; then
  timeout 100 $PY -m pytest -q -p no:cacheprovider tests/test_hypergradient.py 2>&1 | tail -5 | tee "$OUT/tests.txt"
else
  echo "pytest not installed on this machine: GPU exactness tests skipped" | tee "$OUT/tests.txt"
fi

ALL=plain,jvp,jvp_reuse,jvp_every10,jvp_every10_static,autodiff,autodiff_reuse,jvp_head,jvp_remat,torch_plain,torch_recipe
# 2. Quick sizes: the MLP at batch 256 and the small CNN at batch 256, then 8 and 32 runs
#    vmapped against sequential (init_runs / step_runs; the goal: 8 runs >= 6x).
timeout 100 $PY -m benchmarks.speed --models mlp:256,cnn:256 --variants $ALL --out "$OUT/small"
# 3. ResNet-18 (no normalisation), batch 256: the target configuration.
timeout 190 $PY -m benchmarks.speed --models resnet18:256 \
  --variants plain,jvp,jvp_reuse,torch_plain,torch_recipe,jvp_every10,autodiff,jvp_every10_static,jvp_remat,jvp_head,autodiff_reuse \
  --runs "" --out "$OUT/resnet18"
# 4. ResNet-18 with BatchNorm, batch 256.
timeout 80 $PY -m benchmarks.speed --models resnet18_bn:256 \
  --variants plain,jvp,jvp_reuse,torch_plain,torch_recipe --runs "" --out "$OUT/resnet18_bn"
# 5. A larger MLP batch, if time remains.
timeout 40 $PY -m benchmarks.speed --models mlp:1024 --variants plain,jvp,jvp_reuse,autodiff,torch_plain,torch_recipe --runs "" \
  --out "$OUT/mlp1024"
# 6. Many devices: the step against the number of GPUs (one row on a single GPU), the table
#    at N = 10^8 sharded against replicated, and the bfloat16 rows (compute_dtype).
timeout 60 $PY -m benchmarks.scale --repeats 5 --out "$OUT/scale"
echo done
