#!/usr/bin/env bash
# Prepare a fresh Debian machine (with Rust, g++ and Python 3.11) to build and run LiveCalc.
#
# - Debian's CPython 3.11 with its shared library and headers (python3.11-dev, python3.11-venv):
#   livecalc-worker-py embeds exactly this interpreter, so the build (PYO3_PYTHON), the run-time
#   libpython and the virtual environment are one and the same Python.
# - ./.venv: numpy, scipy and pytest for the Python engines and their tests.
# - cargo build --release of every binary.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=/usr/bin/python3.11
need=()
[ -x "$PY" ] || need+=(python3.11)
[ -f /usr/include/python3.11/Python.h ] || need+=(python3.11-dev)
[ -e /usr/lib/x86_64-linux-gnu/libpython3.11.so ] || [ -e "/usr/lib/$(uname -m)-linux-gnu/libpython3.11.so" ] || need+=(libpython3.11-dev)
"$PY" -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3.11-venv)
command -v g++ >/dev/null || need+=(g++)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; assert sys.base_prefix == "/usr"' 2>/dev/null; then
  rm -rf .venv
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt

export PYO3_PYTHON="$PWD/.venv/bin/python"
cargo build --release --workspace --bins --quiet
echo "setup: ready (python: $(.venv/bin/python -c 'import sys; print(sys.version.split()[0], sys.base_prefix)'))"
