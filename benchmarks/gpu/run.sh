#!/usr/bin/env bash
# The GPU figures of issues 3 and 6 in one command, for a lent GPU machine (device tool), in
# priority order, each benchmark under its own time limit so a cut-short run still returns
# what it measured (both scripts rewrite their CSV after every row):
#   1. meta_step.py   -- the NRES meta-step vs N on the lopt task, float32 then bfloat16, placed
#                        on the roofline measured in the same process (matmul rate, bandwidth);
#   2. estimators.py  -- lopt task: PES / NRES / TBPTT vs evosax PersistentES / NoiseReuseES;
#   3. estimators.py  -- Lorenz: PES / NRES vs evosax, K in {1, 10, 100}.
# Both comparisons run --lockstep (evosax's schedule), as the CPU tables in RESULTS.md do, so
# the GPU ratios compare with them.
# Then record the tables in benchmarks/RESULTS.md.
#
# Here first:  bash benchmarks/gpu/fetch_wheels.sh
# There:       run(command="bash benchmarks/gpu/run.sh", carry=[".whl"], timeout_s=560)
# Rehearsal on a CPU (small sizes):
#   QUICK=1 PYTHON=/path/to/python WHEELS=/tmp/whl311 OUT=/tmp/gpu-out bash benchmarks/gpu/run.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-results/gpu}
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/lopt-site}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if [ "${QUICK:-0}" = 1 ]; then
  STEP_N="8 16"; LOPT_N="8"; LORENZ_N="8 32"; LORENZ_K="1 10"; LIMITS=(300 300 300); TIMING=(--repeats 2 --min-time 0.05)
else
  # N largest first: issue 6's roofline target is judged at the largest N
  STEP_N="4096 1024 256 32"; LOPT_N="128 1024"; LORENZ_N="8 128 1024"; LORENZ_K="1 10 100"
  LIMITS=(150 170 130); TIMING=(--repeats 3 --min-time 0.3)
fi

"$PYTHON" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir \
  --upgrade --target "$SITE" "$WHEELS"/*.whl || { echo "run.sh: installing $WHEELS/*.whl failed" >&2; exit 1; }
export PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
  "$PYTHON" -c "import sys, jax; from importlib.metadata import version as v
print('python', sys.version.split()[0], *(f'{p} {v(p)}' for p in ('jax', 'jaxlib', 'optax', 'flax', 'evosax', 'pydantic')))
print(jax.devices())"
} 2>&1 | tee "$OUT/machine.txt"
"$PYTHON" -c "from pathlib import Path; from lopt.data import prepare; prepare('digits', Path('data'), seed=0)" \
  || { echo "run.sh: preparing digits failed" >&2; exit 1; }

status=0
step() {  # step NAME LIMIT_S ARGS...: one benchmark, its log and CSV under $OUT
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit} s): $*"
  timeout --kill-after=10 "$limit" "$PYTHON" "$@" --csv "$OUT/$name.csv" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || { echo "== $name ended with status $rc (124: its time limit)"; status=1; }
}
# shellcheck disable=SC2086  # the size lists split into arguments on purpose
step meta_step "${LIMITS[0]}" benchmarks/meta_step.py --num-particles $STEP_N \
  --precision float32 bfloat16 --devices all --repeats 3
step estimators_lopt "${LIMITS[1]}" benchmarks/estimators.py --lockstep --problems lopt \
  --estimators pes nres tbptt --num-particles $LOPT_N --trunc-lengths 10 --horizon 20 "${TIMING[@]}"
step estimators_lorenz "${LIMITS[2]}" benchmarks/estimators.py --lockstep --problems lorenz \
  --estimators pes nres --num-particles $LORENZ_N --trunc-lengths $LORENZ_K "${TIMING[@]}"
exit $status
