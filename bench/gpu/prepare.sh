#!/usr/bin/env bash
# Run HERE (the CPU machine with the repo's .venv), before a GPU session: fills bench/gpu/wheels/ with
#  - this package, built from (a copy of) the working tree: pip wheel --no-deps --no-build-isolation;
#  - the pure-Python (and small binary) dependencies the GPU image lacks, for its CPython 3.12 on
#    x86-64 Linux, at the versions this .venv runs (pip download from the package index).
# torch, transformers, torchvision, numpy, pillow, pyyaml are already on the GPU machine and are not
# shipped. bench/gpu/wheels/ is git-ignored: pass it to the device tool with carry=["bench/gpu/wheels"].
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
WHEELS=$(realpath -m "${WHEELS:-bench/gpu/wheels}")
TARGET_PY=${TARGET_PY:-3.12}
rm -rf "$WHEELS" && mkdir -p "$WHEELS"

# Built from a copy of the working tree, so setuptools' build/ and *.egg-info land there, not in the repo.
SRC=$(mktemp -d)
trap 'rm -rf "$SRC"' EXIT
cp -r pyproject.toml README.md moderation consumers migrations "$SRC"/
find "$SRC" -name __pycache__ -prune -exec rm -rf {} +
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$WHEELS" "$SRC"

# Distributions the GPU image does not have (see /work/.library/device/KINDS.md), at our versions.
DISTS=(pydantic pydantic-core annotated-types typing-inspection pydantic-settings python-dotenv
       structlog sqlalchemy alembic mako kafka-python crc32c)
SPECS=()
for dist in "${DISTS[@]}"; do
  version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$dist")
  SPECS+=("$dist==$version")
done
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$TARGET_PY" --implementation cp \
  "${PLATFORMS[@]}" -d "$WHEELS" "${SPECS[@]}"
ls -la "$WHEELS"
du -sh "$WHEELS"
