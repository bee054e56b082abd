#!/usr/bin/env bash
# Run ON THE GPU MACHINE from the repository root (no network there):
#     bash bench/gpu/run.sh [gpu_bench.py options]
# Installs this package from bench/gpu/wheels/ (built by bench/gpu/prepare.sh on the CPU machine) into a
# private --target folder, plus whichever of its light dependencies python3 cannot import, with
# --no-index --no-deps (nothing is fetched, torch & co. are left alone), then runs gpu_bench.py, which
# keeps to its own time budget (default 420 s) and writes gpu_bench.json/.md to $OUT if set.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
WHEELS=$(realpath -m "${WHEELS:-bench/gpu/wheels}")
SITE=${BENCH_SITE:-/tmp/moderation-bench-site}
export PYTHONUNBUFFERED=1

if [ ! -d "$WHEELS" ] || ! ls "$WHEELS"/moderation-*.whl >/dev/null 2>&1; then
  echo "run.sh: no $WHEELS/moderation-*.whl: run bench/gpu/prepare.sh on the CPU machine first and carry" \
       "bench/gpu/wheels to this one" >&2
  exit 2
fi
"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
'transformers', transformers.__version__)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi unavailable"

# module name -> distribution name, for what the moderation package imports
MISSING=()
while read -r module dist; do
  "$PY" -c "import $module" >/dev/null 2>&1 || MISSING+=("$dist")
done <<'LIST'
pydantic pydantic
pydantic_core pydantic-core
annotated_types annotated-types
typing_inspection typing-inspection
pydantic_settings pydantic-settings
dotenv python-dotenv
structlog structlog
sqlalchemy sqlalchemy
alembic alembic
mako mako
kafka kafka-python
crc32c crc32c
LIST
# pydantic and pydantic-core must come as a matching pair: if either is missing, ship both.
if printf '%s\n' "${MISSING[@]:-}" | grep -qx 'pydantic\|pydantic-core'; then
  MISSING+=(pydantic pydantic-core)
fi
rm -rf "$SITE"
echo "installing moderation${MISSING[*]:+ and missing: ${MISSING[*]}} into $SITE"
"$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --find-links "$WHEELS" \
  --target "$SITE" moderation $(printf '%s\n' "${MISSING[@]:-}" | sort -u)
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
# From / so that the checkout in the working directory does not shadow the installed wheel.
(cd / && "$PY" -c "import moderation, moderation.scorer; print('moderation from', moderation.__file__)")
exec "$PY" bench/gpu/gpu_bench.py "$@"
