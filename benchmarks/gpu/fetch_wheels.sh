#!/usr/bin/env bash
# Run HERE (where PyPI is reachable), before a GPU session's device run: downloads the wheels the
# GPU machine lacks into .whl/ (git-ignored), at the versions of requirements.lock, built for the
# machine's Python (3.12, manylinux x86-64). The device tool's `run` then carries .whl.
#
# The machine's image already has jax (CUDA), optax, orbax-checkpoint, numpy, pandas, pyyaml,
# matplotlib, tqdm, scikit-learn, scipy, tabulate and flax (/work/.library/device/KINDS.md);
# it lacks pydantic and its parts (lopt.config) and evosax + dotmap (the comparison rows).
# typing-extensions travels too: pydantic needs a recent one.
#
#   bash benchmarks/gpu/fetch_wheels.sh                 # -> .whl/ for Python 3.12
#   PY_VERSION=3.11 DEST=/tmp/whl311 bash benchmarks/gpu/fetch_wheels.sh   # local rehearsal
set -euo pipefail
cd "$(dirname "$0")/../.."
PY_VERSION=${PY_VERSION:-3.12}
DEST=${DEST:-.whl}
NAMES="pydantic pydantic-core annotated-types typing-inspection typing-extensions evosax dotmap"

specs=()
for name in $NAMES; do
  spec=$(grep -iE "^${name}==" requirements.lock) || { echo "fetch_wheels: $name is not in requirements.lock" >&2; exit 1; }
  specs+=("$spec")
done
rm -rf "$DEST" && mkdir -p "$DEST"
python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version "$PY_VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DEST" "${specs[@]}"
ls "$DEST"
du -sh "$DEST"
