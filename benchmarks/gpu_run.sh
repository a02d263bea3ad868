#!/usr/bin/env bash
# All GPU checks and benchmarks in one run (at most 530 s, under the device's 600 s a command):
# the exactness tests, the accelerator profile of the suite (python -m benchmarks --profile
# accelerator) one suite at a time, and the many-devices benchmark, each part under its own
# time limit and writing its results as it goes.
# Usage (from the repository root): OUT=/some/dir bash benchmarks/gpu_run.sh
# SKIP_TESTS=1 skips the exactness tests; PYTHON picks the interpreter; PROFILE=tiny checks
# the script itself on a CPU in about a minute.
# Outputs: $OUT/environment.txt, tests.txt, parts.txt (each part's exit status and seconds),
# and $OUT/speed, $OUT/scale, $OUT/rules, $OUT/kd (JSON + Markdown, as on the CPU).
set -u
OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
export PYTHONPATH=.
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.5  # leave room for the PyTorch side by side
PY=${PYTHON:-python}
PROFILE=${PROFILE:-accelerator}
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import jax, jaxlib, flax, optax; print('jax', jax.__version__, 'jaxlib', jaxlib.__version__, 'flax', flax.__version__, 'optax', optax.__version__); print(jax.devices())"
  $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
} 2>&1 | tee "$OUT/environment.txt"
: > "$OUT/parts.txt"

part() {  # part NAME SECONDS COMMAND...: run with a limit, log its status and duration
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  timeout "$limit" "$@"
  echo "$name: exit $? after $((SECONDS - start)) s (limit $limit s)" | tee -a "$OUT/parts.txt"
}

# 1. Exactness on the GPU: finite differences, closed forms, jvp == autodiff.
if [ -n "${SKIP_TESTS:-}" ]; then
  echo "exactness tests skipped (SKIP_TESTS set)" | tee "$OUT/tests.txt"
elif $PY -c "import pytest" 2>/dev/null; then
  part tests 50 bash -c "$PY -m pytest -q -p no:cacheprovider tests/test_hypergradient.py 2>&1 | tail -5 | tee '$OUT/tests.txt'"
else
  echo "pytest not installed on this machine: GPU exactness tests skipped" | tee "$OUT/tests.txt"
fi

# 2. The accelerator profile's speed suite: the MLP at b256 and b1024, the CNN and ResNet-18
#    with and without BatchNorm at b256, bfloat16 rows, PyTorch side by side, 8 and 32 vmapped
#    runs. Its rules and distillation suites (256-256 students, 8 seeds) are parts 4 and 5.
part speed 140 $PY -m benchmarks --profile "$PROFILE" --suites speed --out "$OUT"
# 3. Many devices: the step against the number of GPUs (one row on a single GPU), the table
#    at N = 10^8 sharded against replicated, and the bfloat16 rows (compute_dtype).
if [ "$PROFILE" = tiny ]; then
  part scale 60 $PY -m benchmarks.scale --quick --out "$OUT/scale"
else
  part scale 50 $PY -m benchmarks.scale --repeats 5 --out "$OUT/scale"
fi
# 4-5. Rules and distillation, accelerator-sized.
part rules 130 $PY -m benchmarks --profile "$PROFILE" --suites rules --out "$OUT"
part kd 150 $PY -m benchmarks --profile "$PROFILE" --suites kd --out "$OUT"
echo done
