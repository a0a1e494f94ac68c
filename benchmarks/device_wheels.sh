#!/usr/bin/env bash
# Fetch, on a machine with network access, the wheels the device machine lacks: its image ships torch, triton,
# numpy, click, safetensors, scikit-image, pytest-benchmark and the rest of pdfast's needs, but not diffusers
# (nor diffusers' importlib_metadata). They land in .whl/ (ignored by git) and travel with `carry: [".whl"]`;
# benchmarks/device_env.sh installs them there. Nothing is downloaded on the device machine or at run time.
#
#   bash benchmarks/device_wheels.sh          # then run the device command with carry [".whl"]
set -euo pipefail
cd "$(dirname "$0")/.."
DIFFUSERS="$(python -c 'import diffusers; print(diffusers.__version__)' 2>/dev/null || echo 0.42.1)"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "diffusers==$DIFFUSERS" importlib_metadata
ls -la .whl
