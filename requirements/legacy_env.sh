#!/usr/bin/env bash
# Creates the Horovod + Petastorm trainer environment: requirements/legacy_env.sh VENV
#
# Horovod 0.28.1 (its last release) has no wheel for Python 3.11 and its CMake files force
# C++14, which torch >= 2.1 headers refuse. It is built here from the PyPI sdist with C++17
# (two lines patched), against the pinned torch, with Gloo (CPU) and without MPI/TF/MXNet.
# The wheel is cached under $RECPIPE_CACHE (default ~/.cache/recpipe), keyed by the versions
# it is bound to, so the next set-up reinstalls it in seconds instead of building it again.
# recpipe itself goes in as a .pth path entry: `pip install` would pull its main-environment
# dependencies (pyspark 4.3, pyarrow >= 18), which Petastorm cannot run with.
set -euo pipefail
VENV=${1:?usage: legacy_env.sh VENV}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
HOROVOD=0.28.1
TORCH=2.13.0
PY_TAG=$("$PYTHON" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
# GPU clusters build with HOROVOD_GPU_OPERATIONS=NCCL (and a CUDA torch): a different wheel.
OPS=$(echo "${HOROVOD_GPU_OPERATIONS:-cpu}" | tr '[:upper:]' '[:lower:]')
CACHE=${RECPIPE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/recpipe}/wheels/horovod-$HOROVOD-torch$TORCH-$PY_TAG-cxx17-$OPS
started=$(date +%s)

test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install -q -c "$HERE/legacy.txt" -r "$HERE/legacy.txt"
# Petastorm declares pyspark and setuptools<70 (torch 2.13 needs setuptools >= 77); neither is
# used by its reader, so it goes in without dependencies (the ones it uses are in legacy.txt).
"${PIP[@]}" install -q --no-deps petastorm==0.13.1

wheel=$(ls "$CACHE"/horovod-$HOROVOD-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
  echo "legacy-venv: building Horovod $HOROVOD from source (3-5 minutes on 2 cores; cached in $CACHE)"
  src=$(mktemp -d)
  trap 'rm -rf "$src"' EXIT
  "${PIP[@]}" download -q --no-deps --no-binary :all: "horovod==$HOROVOD" -d "$src"
  tar -xzf "$src/horovod-$HOROVOD.tar.gz" -C "$src"
  tree="$src/horovod-$HOROVOD"
  # torch >= 2.1 headers need C++17; Horovod pins C++14 in exactly these two places.
  sed -i 's/^set(CMAKE_CXX_STANDARD 14)$/set(CMAKE_CXX_STANDARD 17)/' "$tree/CMakeLists.txt"
  sed -i 's/^    set(CMAKE_CXX_STANDARD 14)$/    set(CMAKE_CXX_STANDARD 17)/' \
    "$tree/horovod/torch/CMakeLists.txt"
  grep -q '^set(CMAKE_CXX_STANDARD 17)$' "$tree/CMakeLists.txt"
  grep -q '^    set(CMAKE_CXX_STANDARD 17)$' "$tree/horovod/torch/CMakeLists.txt"
  mkdir -p "$src/wheel"
  # Horovod's setup.py runs make -j8 unless MAKEFLAGS says otherwise; the build imports the
  # venv's torch, so the venv's python must come first on PATH.
  ( export PATH="$VENV/bin:$PATH" MAKEFLAGS="-j${RECPIPE_BUILD_JOBS:-$(nproc)}" \
      HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
      HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
    "${PIP[@]}" wheel -q --no-build-isolation --no-deps -w "$src/wheel" "$tree" )
  mkdir -p "$CACHE"
  cp "$src"/wheel/horovod-$HOROVOD-*.whl "$CACHE/"
  wheel=$(ls "$CACHE"/horovod-$HOROVOD-*.whl | head -n 1)
fi
"${PIP[@]}" install -q --no-deps --force-reinstall "$wheel"

site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$ROOT" > "$site/recpipe-source.pth"

"$VENV/bin/horovodrun" --check-build | grep '\[X\] PyTorch' > /dev/null
"$VENV/bin/python" -c "import horovod.torch, petastorm, pyarrow_hotfix, recpipe.train.loop"
echo "legacy-venv: ready in $(( $(date +%s) - started )) s ($VENV; Horovod wheel: $wheel)"
