#!/usr/bin/env bash
# The cpu_mini comparison: finetune, replay, joint and errwise (at replay's step budget) on 3 task orders.
# Usage: benchmarks/cpu_mini.sh FEWREL_DIR OUT_DIR [WORKERS]
# Runs WORKERS runs at a time with one thread each (on 2 cores, two 1-thread runs beat one 2-thread run).
# A run folder that already holds summary.json is skipped; an interrupted one resumes.
set -u
fewrel=$1; out=$2; workers=${3:-2}
mkdir -p "$out"
jobs=()
for order in 0 1 2; do for method in replay finetune joint; do jobs+=("$method $order"); done; done
for order in 0 1 2; do jobs+=("errwise $order"); done
run_one() {
  local method=$1 order=$2 dir="$out/$1-$2"
  [ -f "$dir/summary.json" ] && return
  local extra=()
  [ "$method" = errwise ] && extra=(--train.budget replay)
  if [ -f "$dir/config.yaml" ]; then
    OMP_NUM_THREADS=1 errwise run "$dir" > "$dir.log" 2>&1
  else
    OMP_NUM_THREADS=1 errwise run configs/cpu_mini.yaml --data.path "$fewrel" --data.order "$order" \
      --method.name "$method" "${extra[@]}" --output_dir "$dir" > "$dir.log" 2>&1
  fi
  echo "$(date +%T) $method $order: $(tail -1 "$dir.log")"
}
export -f run_one; export out fewrel
printf '%s\n' "${jobs[@]}" | xargs -P "$workers" -L 1 bash -c 'run_one $0 $1'
