#!/usr/bin/env bash
# Set up a fresh machine and run an example pipeline (default: the full pipeline); outputs go to
# ./out/<example>.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
example="${1:-full_pipeline}"
dag="examples/dag_config_${example}.json"
out="out/${example}"
[ -f "$dag" ] || { echo "no such example: $dag" >&2; exit 2; }
rm -rf "$out"
echo "== livecalc-supervisor run $dag --out $out"
status=0
target/release/livecalc-supervisor run "$dag" --out "$out" || status=$?
echo "== summary of $out/manifest.json"
.venv/bin/python - "$out/manifest.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"status {m['status']} in {m['wall_ms']:.0f} ms (run {m['run_id']})")
for n in m["nodes"]:
    extra = f", re-evaluated {n['evaluations']}x" if n["evaluations"] else ""
    print(f"  {n['id']:<12} {n['type']:<18} {n['status']:<10} {n['rows']:>7} rows, "
          f"{n['chunks']['done']}/{n['chunks']['total']} chunks, {n['worker_starts']} worker(s){extra}")
    r = n.get("report") or {}
    if "parameters" in r:
        print(f"    solution: {r['parameters']}  converged={r['converged']} after {r['evaluations']} evaluations "
              f"({r.get('message', '')})")
for o in m["outputs"]:
    print(f"  {o['path']:<34} {o['rows']:>7} rows  sha256 {o['sha256'][:12]}")
for e in m["errors"]:
    print(f"  error: {e}")
PY
exit $status
