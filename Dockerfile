# The coded ensemble on the NGC Triton image: native ONNX Runtime backend (GPU when present),
# the project's Python-based backends beside it. The tag matches the nvidia-pytriton wheel's
# server (Triton 2.51, r24.10); to move it, change TRITON_TAG here and in docker-compose.yml.
ARG TRITON_TAG=24.10-py3
FROM nvcr.io/nvidia/tritonserver:${TRITON_TAG}

WORKDIR /opt/coded-serving
COPY pyproject.toml README.md ./
COPY coded_serving ./coded_serving
RUN pip install --no-cache-dir ".[gpu]"

# Python-based backends: /opt/tritonserver/backends/<name>/model.py makes backend "<name>" usable.
# No onnxruntime shim here: the image's native ONNX Runtime backend serves the members.
COPY python_backends/coded_ensemble/model.py /opt/tritonserver/backends/coded_ensemble/model.py
COPY python_backends/coded_encoder/model.py /opt/tritonserver/backends/coded_encoder/model.py
COPY python_backends/coded_decoder/model.py /opt/tritonserver/backends/coded_decoder/model.py
COPY python_backends/bls_forward/model.py /opt/tritonserver/backends/bls_forward/model.py
