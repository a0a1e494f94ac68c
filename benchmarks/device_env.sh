# Sourced by the device scripts (benchmarks/gpu_check.sh, research/zoo/capacity_gpu.sh): make pdfast importable on the
# bare device machine, offline. diffusers comes from the wheels in .whl/ (benchmarks/device_wheels.sh, carried with the
# call) when the machine lacks it; pdfast itself is installed editable without its dependencies (the machine's
# image holds them) and without build isolation (no index to fetch setuptools from).
if ! python -c "import diffusers" >/dev/null 2>&1; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/pdfast-site .whl/*.whl
    export PYTHONPATH="/tmp/pdfast-site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "error: diffusers is not installed here and no wheels were carried; run bash benchmarks/device_wheels.sh and carry .whl" >&2
    return 1 2>/dev/null || exit 1
  fi
fi
# (checked from outside the checkout: inside it `import pdfast` works uninstalled, without the `pdfast` command)
if ! command -v pdfast >/dev/null || ! (cd / && python -c "import pdfast, pdfast.kernels") >/dev/null 2>&1; then
  pip install -q --no-build-isolation --no-deps -e . >/dev/null
fi
python -c "import pdfast, diffusers, torch; print('device env: pdfast', pdfast.__version__, '| diffusers', diffusers.__version__, '| torch', torch.__version__, '| cuda', torch.cuda.is_available())"
