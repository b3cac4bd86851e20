#!/usr/bin/env bash
# The GPU path end to end on the embedded SmolLM2-135M-Instruct, in under 8 minutes on one NVIDIA
# GPU: SFT and DPO in bf16, the evaluate stage, vLLM generation and one FSDP2 step, each in its own
# process (scripts/gpu_check.py), then one table of tokens/s and peak memory. Run from anywhere:
#
#   scripts/gpu_check.sh                          # on the GPU
#   GPU_CHECK_DEVICE=cpu scripts/gpu_check.sh     # every part on the CPU, small settings: checks the logic
#
# PYTHON: the interpreter with the project installed (default .venv/bin/python, else python).
# GPU_CHECK_DIR: where data, models and results go (default a new temporary folder, kept).
# GPU_CHECK_PARTS: which parts to run (default all: data sft dpo evaluate vllm fsdp).
# GPU_CHECK_PART_TIMEOUT: seconds each part may take (default 240).
# GPU_CHECK_TOTAL_TIMEOUT: seconds all parts may take together (default none): a part gets at most what is
#   left, and one with under 10 s left is not started, so a run inside a time limit still prints its table.
# GPU_CHECK_MODEL: a transformers folder to run instead of the embedded model; one with config and
#   tokenizer files but no weights stands for that architecture with random weights (scripts/gpu_check.py).
# GPU_CHECK_FSDP_PROCS: processes of the fsdp part (default 2 with 2+ GPUs: the trainer's sharding="fsdp";
#   else 1: a raw fully_shard step; on the CPU, 2 runs the trainer's path over gloo).
# A part that fails is reported in the table with its error; the others still run, and the
# script exits 1.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
PARTS=${GPU_CHECK_PARTS:-data sft dpo evaluate vllm fsdp}
WORK=${GPU_CHECK_DIR:-$(mktemp -d -t gpu-check.XXXXXX)}
mkdir -p "$WORK/results" "$WORK/logs"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # dpo_core from this checkout, installed or not
export DPO_PIPELINE_ENGINE=local  # engine "auto": transformers for the evaluate part (vLLM has its own part)
export VLLM_ENABLE_V1_MULTIPROCESSING=0  # vLLM's engine in the part's own process: its memory is counted there
export TOKENIZERS_PARALLELISM=false

case "${GPU_CHECK_DEVICE:-cuda}" in
  cpu) export CUDA_VISIBLE_DEVICES="" VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-2}
       GPUS=1 ;;  # as one GPU: the fsdp part takes the path a one-GPU machine takes
  cuda) GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())") || exit 1
        [ "$GPUS" -gt 0 ] ||
          { echo "no CUDA GPU visible to torch: GPU_CHECK_DEVICE=cpu checks the logic on the CPU" >&2; exit 1; } ;;
  *) echo "GPU_CHECK_DEVICE=${GPU_CHECK_DEVICE}: use cuda or cpu" >&2; exit 2 ;;
esac
# fsdp: the trainer's sharding needs 2 processes (one GPU each); on one GPU a raw one-process FSDP2 step
FSDP_PROCS=${GPU_CHECK_FSDP_PROCS:-$(( GPUS >= 2 ? 2 : 1 ))}
echo "gpu_check: ${GPU_CHECK_DEVICE:-cuda}, parts: $PARTS, fsdp processes: $FSDP_PROCS, work: $WORK," \
  "model: ${GPU_CHECK_MODEL:-embedded}"

started=$SECONDS
for part in $PARTS; do
  launch=("$PYTHON")
  [ "$part" = fsdp ] && launch=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$FSDP_PROCS")
  rm -f "$WORK/results/$part.json" "$WORK/results/$part.failed"
  limit=${GPU_CHECK_PART_TIMEOUT:-240}
  if [ -n "${GPU_CHECK_TOTAL_TIMEOUT:-}" ]; then
    left=$(( GPU_CHECK_TOTAL_TIMEOUT - (SECONDS - started) ))
    if [ "$left" -lt 10 ]; then
      echo "not started: GPU_CHECK_TOTAL_TIMEOUT=${GPU_CHECK_TOTAL_TIMEOUT} s spent" > "$WORK/results/$part.failed"
      echo "gpu_check: $part $(cat "$WORK/results/$part.failed")"
      continue
    fi
    [ "$left" -lt "$limit" ] && limit=$left
  fi
  part_started=$SECONDS
  timeout "$limit" "${launch[@]}" scripts/gpu_check.py "$part" --work "$WORK" > "$WORK/logs/$part.log" 2>&1
  rc=$?
  if [ $rc -ne 0 ] || [ ! -f "$WORK/results/$part.json" ]; then
    why=$(cat "$WORK/results/$part.failed" 2>/dev/null)  # the part's own one line, when it got to write it
    [ -n "$why" ] || why="$([ $rc -eq 124 ] && echo "timed out" || echo "exit $rc")"
    echo "$why (log: $WORK/logs/$part.log)" > "$WORK/results/$part.failed"
    echo "gpu_check: $part FAILED after $((SECONDS - part_started)) s: $(cat "$WORK/results/$part.failed")"
  else
    echo "gpu_check: $part done in $((SECONDS - part_started)) s"
  fi
done

echo
echo "gpu_check: $((SECONDS - started)) s in all; logs and outputs in $WORK"
"$PYTHON" scripts/gpu_check.py summary --work "$WORK"
