#!/usr/bin/env bash
# Idempotent setup shared by demo.sh and test.sh: the Fashion-MNIST Debian package, a project
# venv with the package and its CPU dependencies, and the default model repository.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -e /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
stamp=.venv/.coded-serving-installed
wanted=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch is pinned to 2.13.0 (the export extra): a CPU build, not the multi-GB CUDA one
  .venv/bin/python -m pip install -q -e ".[cpu,export,load,test]"
  echo "$wanted" > "$stamp"
fi

if [ ! -e model_repository/lenet5_parm/config.pbtxt ]; then
  .venv/bin/python export/build_default.py
fi
