"""vLLM's OpenAI-compatible server for any model reference this project takes, for judges and
generators shared across runs (``openai:http://host:8000/v1|<served name>``):

    python -m dpo_core.inference.serve --model embedded:smollm2-135m-instruct --port 8000

The reference is resolved as the stages resolve it (the embedded default is converted once), and
vLLM's server is started on the folder with this machine's defaults (on a CPU: eager mode, a KV
cache of ``--cpu-kv-cache-gib``). ``--data-parallel-size`` and ``--tensor-parallel-size`` are
vLLM's own: replicas and splits across GPUs. Arguments after ``--`` go to vLLM unchanged.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request

from dpo_core.common.models import compute_device, resolve_model
from dpo_core.inference.config import EngineConfig


def vllm_server_command(model_ref: str, port: int, engine: EngineConfig, host: str = "127.0.0.1",
                        served_name: str | None = None, extra: list[str] | None = None) -> tuple[list[str], dict]:
    """The command line and environment that serve ``model_ref`` with vLLM's OpenAI server."""
    gpu = compute_device().type == "cuda"
    env = dict(os.environ)
    if not gpu:  # vLLM's CPU backend sizes its KV cache from this variable
        env["VLLM_CPU_KVCACHE_SPACE"] = f"{engine.cpu_kv_cache_gib:g}"
    # the module, not the `vllm` console script: the script asks for the `vllm` distribution, which the CPU build
    # (`vllm-cpu`) is not
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", resolve_model(model_ref),
               "--served-model-name", served_name or model_ref, "--host", host, "--port", str(port),
               "--dtype", engine.dtype, "--tensor-parallel-size", str(engine.tensor_parallel_size),
               "--data-parallel-size", str(engine.data_parallel_size),
               "--gpu-memory-utilization", str(engine.memory_share(gpu)),
               # the request's sampling settings only, as the offline engine (not generation_config.json's defaults)
               "--generation-config", "vllm"]
    if engine.max_model_len:
        command += ["--max-model-len", str(engine.max_model_len)]
    if engine.eager(gpu):
        command.append("--enforce-eager")
    if not gpu:  # whole prefills: vLLM 0.32's CPU backend crashes on a seeded request whose prefill it splits
        command.append("--no-enable-chunked-prefill")
    return command + list(extra or []), env


def start_server(model_ref: str, port: int, engine: EngineConfig | None = None, timeout_s: float = 600,
                 own_session: bool = True, **kwargs) -> subprocess.Popen:
    """vLLM's server, returned once ``/v1/models`` answers: in its own process group, or with
    ``own_session=False`` in the caller's (so killing the caller's group stops it)."""
    command, env = vllm_server_command(model_ref, port, engine or EngineConfig(), **kwargs)
    server = subprocess.Popen(command, env=env, start_new_session=own_session)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"vLLM's server for {model_ref!r} exited with {server.returncode} before it answered")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2).close()
                return server
            except OSError:
                time.sleep(1)
        raise TimeoutError(f"vLLM's server for {model_ref!r} did not answer on port {port} within {timeout_s:.0f} s")
    except BaseException:
        stop_server(server)
        raise


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM (vLLM's server then stops its engine processes), SIGKILL after a grace period."""
    server.terminate()
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    ours, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(prog="python -m dpo_core.inference.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct")
    parser.add_argument("--served-name", help="the model name clients ask for (default: --model)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    defaults = EngineConfig()
    parser.add_argument("--dtype", default=defaults.dtype)
    parser.add_argument("--tensor-parallel-size", type=int, default=defaults.tensor_parallel_size)
    parser.add_argument("--data-parallel-size", type=int, default=defaults.data_parallel_size)
    parser.add_argument("--gpu-memory-utilization", type=float)
    parser.add_argument("--cpu-kv-cache-gib", type=float, default=defaults.cpu_kv_cache_gib)
    parser.add_argument("--max-model-len", type=int)
    args = parser.parse_args(ours)
    engine = EngineConfig(name="vllm", dtype=args.dtype, tensor_parallel_size=args.tensor_parallel_size,
                          data_parallel_size=args.data_parallel_size, gpu_memory_utilization=args.gpu_memory_utilization,
                          cpu_kv_cache_gib=args.cpu_kv_cache_gib, max_model_len=args.max_model_len)
    command, env = vllm_server_command(args.model, args.port, engine, args.host, args.served_name, extra)
    os.execve(command[0], command, env)  # vLLM's server takes this process over: signals reach it directly


if __name__ == "__main__":
    main()
