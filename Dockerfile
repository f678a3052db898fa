# The coded ensemble on the NGC Triton image: native ONNX Runtime backend (GPU when present), the
# project's scheduler (C++) and Python-based encoder/decoder backends beside it. The tag matches the
# nvidia-pytriton wheel's server (Triton 2.51, r24.10); to move it, change TRITON_TAG here and in
# docker-compose.yml.
ARG TRITON_TAG=24.10-py3
FROM nvcr.io/nvidia/tritonserver:${TRITON_TAG}

RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/coded-serving
COPY pyproject.toml setup.py README.md ./
COPY coded_serving ./coded_serving
COPY python_backends ./python_backends
RUN pip install --no-cache-dir ".[gpu]"

# The same layout the project's launcher uses: <backends>/<name>/model.py for the Python-based
# backends and coded_ensemble/libtriton_coded_ensemble.so, compiled here. The image's native
# onnxruntime backend is kept.
RUN coded-serving backends /opt/tritonserver/backends
