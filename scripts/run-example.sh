#!/usr/bin/env bash
# Set up a fresh machine and run the main example pipeline; outputs go to ./out/<example>.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
example="${1:-full_pipeline}"
dag="examples/dag_config_${example}.json"
out="out/${example}"
rm -rf "$out"
echo "== livecalc-supervisor run $dag --out $out"
target/release/livecalc-supervisor run "$dag" --out "$out"
echo "== $out/manifest.json"
head -c 1500 "$out/manifest.json"; echo
echo "..."
ls -l "$out"/*/
