#!/usr/bin/env bash
# benchmarks/gpu.py under a hard time limit of GPU_LIMIT_S seconds (default 480: the device tool allows 600 a
# command); the script's own budget is 40 s less, so it normally ends by itself, printing its summary.
# Where $OUT is set (the device machine) its log, figures.json and the FCRE run's small files are copied there.
#
#   benchmarks/gpu.sh [gpu.py options]        e.g. benchmarks/gpu.sh --fcre .carry/b/fewrel   (docs/speed.md)
set -uo pipefail
cd "$(dirname "$0")/.."
limit=${GPU_LIMIT_S:-480}
out=runs/gpu-$(date +%Y%m%d-%H%M%S)
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
timeout -k 20 "$limit" "${PYTHON:-python3}" benchmarks/gpu.py --budget-s $((limit - 40)) --out "$out" "$@" 2>&1 |
  tee "$out/gpu.log"
rc=$?
[ "$rc" = 124 ] && echo "gpu.sh: stopped at its ${limit} s limit (the figures above were measured)"
if [ -n "${OUT:-}" ]; then
  cp "$out/gpu.log" "$OUT/"
  cp "$out/figures.json" "$OUT/" 2>/dev/null
  for f in metrics.jsonl summary.json accuracy_matrix.json environment.jsonl; do
    cp "$out/fcre-run/$f" "$OUT/fcre-$f" 2>/dev/null
  done
fi
exit "$rc"
