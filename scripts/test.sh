#!/usr/bin/env bash
# Set up a fresh machine and pass every test: Rust unit and end-to-end tests (real supervisor,
# real worker processes, real shared memory), C++ engine tests through the real cxx bridge, and
# the Python engines' tests in the project's virtual environment.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

export PYO3_PYTHON=/usr/bin/python3.11
echo "== Rust and C++ tests (release build, the binaries the tests start are the ones just built)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --workspace --no-fail-fast
else
  cargo test --release --workspace --no-fail-fast
fi

echo "== Python engine tests"
PYTHONPATH=worker-py/python .venv/bin/python -m pytest worker-py/tests -q
