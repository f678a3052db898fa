#!/usr/bin/env bash
# Idempotent setup shared by demo.sh and test.sh: the Fashion-MNIST Debian package, a C++ compiler,
# a project venv with the package and its CPU dependencies, the scheduler backend compiled once, and
# the default model repository.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# What apt must provide: the data set, g++ (the scheduler is a C++ Triton backend), venv's ensurepip (python3-venv, for a fresh .venv) and the shared
# libpython that tritonserver's Python backend stub loads (some systems ship only the interpreter).
missing=()
[ -e /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
command -v g++ >/dev/null || missing+=(g++)
[ -x .venv/bin/python ] || python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
version=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
python3 -c '
import ctypes, os, sys, sysconfig
name = f"libpython{sys.argv[1]}.so.1.0"
if not os.path.exists(os.path.join(sysconfig.get_config_var("LIBDIR"), name)):
    ctypes.CDLL(name)  # fails when the dynamic loader cannot find it either
' "$version" 2>/dev/null || missing+=("libpython$version")
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  if ! command -v apt-get >/dev/null || { [ -n "$sudo" ] && ! command -v sudo >/dev/null; }; then
    echo "setup: missing ${missing[*]}: install them (Debian/Ubuntu: apt-get install ${missing[*]}) and rerun" >&2
    exit 1
  fi
  $sudo apt-get update -qq
  if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"; then
    echo "setup: apt-get could not install ${missing[*]}: install them by hand and rerun" >&2
    exit 1
  fi
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

# the one compiler command, run once per version of the scheduler's sources (cached in ~/.cache/coded-serving)
.venv/bin/coded-serving backends build/backends >/dev/null

if [ ! -e model_repository/lenet5_parm/config.pbtxt ]; then
  .venv/bin/python export/build_default.py
fi
