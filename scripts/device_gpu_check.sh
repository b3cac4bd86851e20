#!/usr/bin/env bash
# scripts/gpu_check.sh on a lent GPU machine that cannot download, in about 6 minutes at most: run from the
# repo root with .whl and .gpu-model carried beside the working tree, results into $OUT.
#
#   .whl        wheels of what dpo_core imports on these parts and the machine's Python lacks or holds in
#               another version (pydantic and its needs, typing_extensions, peft), installed into /tmp/site
#   .gpu-model  SmolLM2-135M-Instruct's config and tokenizer files without weights: gpu_check.py builds
#               random weights from them (the 500 MB of real weights do not travel), so tokens/s and
#               memory are the real model's and its losses and scores mean nothing
#
# Parts data sft dpo evaluate fsdp (vLLM is not installed there). Back in $OUT: device.log (all of this
# script's output), table.txt, results.json (each part's row), logs.txt (the parts' logs one after the
# other) and gpu_check.tar.gz (results/ and logs/ as written).
#
# PYTHON (default python3), GPU_CHECK_DEVICE (default cuda), GPU_CHECK_WHEELS (default .whl): set them
# to rehearse this script on a machine without a GPU, with wheels for its own Python.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?OUT: the folder whose files come back}"
PY=${PYTHON:-python3}
SITE=/tmp/site
WORK=/tmp/gpu-check
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1  # no network there: never wait on one

main() {
  rm -rf "$SITE" "$WORK" "$WORK.out"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --root-user-action=ignore \
    --target "$SITE" "${GPU_CHECK_WHEELS:-.whl}"/*.whl || return 1
  export PYTHONPATH=$SITE
  echo "device_gpu_check: wheels installed in ${SECONDS} s"
  nvidia-smi || echo "device_gpu_check: no nvidia-smi"
  "$PY" -c 'import sys, accelerate, peft, pydantic, torch, transformers
print("python", sys.version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda,
      "| transformers", transformers.__version__, "| peft", peft.__version__, "from", peft.__file__,
      "| accelerate", accelerate.__version__, "| pydantic", pydantic.VERSION)
print("GPU:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible to torch")' || return 1

  # each part at most 150 s, all of them 300 s (the table still prints); they should take about 3 minutes
  PYTHON=$PY GPU_CHECK_MODEL=.gpu-model GPU_CHECK_DIR=$WORK GPU_CHECK_PARTS="data sft dpo evaluate fsdp" \
    GPU_CHECK_PART_TIMEOUT=150 GPU_CHECK_TOTAL_TIMEOUT=300 bash scripts/gpu_check.sh | tee "$WORK.out"
  local status=${PIPESTATUS[0]}

  sed -n '/^part  /,$p' "$WORK.out" > "$OUT/table.txt"
  "$PY" -c 'import json, pathlib, sys
results = pathlib.Path(sys.argv[1])
rows = {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}
rows |= {p.stem: {"status": "FAILED", "note": p.read_text().strip()} for p in sorted(results.glob("*.failed"))}
print(json.dumps(rows, indent=2))' "$WORK/results" > "$OUT/results.json"
  for log in "$WORK"/logs/*.log; do printf '\n===== %s =====\n' "$log"; cat "$log"; done > "$OUT/logs.txt"
  tar -czf "$OUT/gpu_check.tar.gz" -C "$WORK" results logs
  echo "device_gpu_check: ${SECONDS} s in all, gpu_check.sh exit $status"
  return "$status"
}

main 2>&1 | tee "$OUT/device.log"  # written as it goes: comes back even if the run is cut short
exit "${PIPESTATUS[0]}"
