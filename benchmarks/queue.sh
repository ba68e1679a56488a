#!/usr/bin/env bash
# Run a list of errwise runs WORKERS at a time, one thread each, resumably.
# Usage: benchmarks/queue.sh JOBS_FILE OUT_DIR [WORKERS] [KEPT_DIR]
# JOBS_FILE: one run a line, `NAME ARGS...` (ARGS as for `errwise run`, without --output_dir); `#` comments.
# OUT_DIR/NAME holding summary.json is skipped; one holding config.yaml is resumed (the line's ARGS with --output_dir
# OUT_DIR/NAME: errwise resumes when they give the saved config, and says so in NAME.log when the line was changed);
# KEPT_DIR/NAME holding summary.json (a record kept by benchmarks/keep_runs.py in an earlier session) is skipped too,
# and a run that finishes is kept there at once (its checkpoints stay in OUT_DIR, for --start_from); a finished run
# in OUT_DIR whose record is not in KEPT_DIR (a lane stopped between the two) is kept when a queue comes to its line;
# the log goes to OUT_DIR/NAME.log. Lines are taken in order (on 2 cores, two 1-thread runs beat one 2-thread run).
# A run is claimed with flock on OUT_DIR/NAME.lock while it runs, so several queues (one worker each, say) may share
# a jobs file: each skips what another is running, and a lane that finishes early takes the next unclaimed line.
# Jobs asking for bf16 on a CPU without native bf16 (no AVX512-BF16 or AMX: emulated, a 0.5B step took 350 s against
# seconds) are refused before anything starts; ERRWISE_QUEUE_SLOW_BF16=1 runs them anyway.
# START_BEFORE=23:00 (anything `date -d` reads): a line whose turn comes after that time is not started (a session that
# ends soon does not begin a run it cannot finish; the runs already going finish and are kept).
# A line with --start_from SRC, SRC another line that a lane is running (OUT_DIR/SRC.lock held) and that has not
# finished its first task, waits for that task (polling every QUEUE_POLL_S seconds, 60) instead of failing, and then
# starts only if START_BEFORE has not passed meanwhile. A line whose SRC has no first task to copy (no checkpoint of it:
# never run here, a kept record, or a folder that did not survive) and that no lane runs trains its own task 1 instead
# (the same computation), without --start_from, and says so.
set -u
jobs=$1; out=$2; workers=${3:-2}; kept=${4:-}
start_before=
if [ -n "${START_BEFORE:-}" ]; then
  start_before=$(date -d "$START_BEFORE" +%s) || { echo "queue.sh: START_BEFORE=$START_BEFORE is not a time date(1) reads" >&2; exit 2; }
fi
if [ "${ERRWISE_QUEUE_SLOW_BF16:-0}" != 1 ] && grep -v '^\s*#' "$jobs" | grep -q -- '--model.dtype bfloat16' \
  && ! python -c 'import sys; from errwise.model import cpu_has_native_bf16; sys.exit(cpu_has_native_bf16() is False)'
then
  echo "queue.sh: $jobs asks for --model.dtype bfloat16 and this CPU has no native bf16 (many times slower); use a CPU with AVX512-BF16 or AMX, float32 jobs, or ERRWISE_QUEUE_SLOW_BF16=1" >&2
  exit 2
fi
mkdir -p "$out"
# a finished run whose record is not kept yet (a lane stopped between the two) is kept now
keep_if_done() {
  [ -f "$1/summary.json" ] || return 1
  if [ -n "$kept" ] && [ ! -f "$kept/$(basename "$1")/summary.json" ]; then python benchmarks/keep_runs.py "$1" --dest "$kept"; fi
  return 0
}
too_late() {
  [ -n "$start_before" ] && [ "$(date +%s)" -ge "$start_before" ] || return 1
  echo "$(date +%T) $1: not started (START_BEFORE $(date -d "@$start_before" +%T) has passed)"
}
run_one() {
  local name=$1; shift
  local dir="$out/$name"
  [ -n "$kept" ] && [ -f "$kept/$name/summary.json" ] && return
  [ -f "$dir/summary.json" ] && [ -z "$kept" ] && return
  if [ ! -f "$dir/summary.json" ] && too_late "$name"; then return 0; fi
  exec 9>"$dir.lock"
  flock -n 9 || return 0
  keep_if_done "$dir" && return
  # a line starting from a run another lane is still training waits for that run's first task (or its end)
  local src= prev= rest=()  # rest: the line's arguments without --start_from SRC
  for a in "$@"; do
    case $a in
      --start_from=*) src=${a#--start_from=} ;;
      --start_from) ;;
      *) if [ "$prev" = --start_from ]; then src=$a; else rest+=("$a"); fi ;;
    esac
    prev=$a
  done
  if [ -n "$src" ] && [ ! -f "$dir/config.yaml" ] && [ ! -s "$src/metrics.jsonl" ] && [ -e "$src.lock" ] \
    && ! flock -n "$src.lock" true; then
    echo "$(date +%T) $name: waits for $src's first task"
    while [ ! -s "$src/metrics.jsonl" ] && ! flock -n "$src.lock" true; do sleep "${QUEUE_POLL_S:-60}"; done
    if too_late "$name"; then return 0; fi  # the wait may have been hours
  fi
  # a source with no first task to copy (a kept record has no checkpoint; run folders do not survive a fresh checkout)
  # and that no lane is running: the line trains its own task 1, the same computation, without --start_from (and a
  # run that began so resumes so: errwise resumes only the saved config)
  local drop=
  if [ -n "$src" ]; then
    if [ -s "$dir/metrics.jsonl" ]; then
      grep -qx 'start_from: null' "$dir/config.yaml" 2>/dev/null && drop=1
    elif [ ! -s "$src/metrics.jsonl" ] || [ ! -d "$src/checkpoints/task_00" ]; then
      drop=1
      echo "$(date +%T) $name: $src holds no first task to copy: runs without --start_from (trains its own task 1)"
    fi
  fi
  [ -n "$drop" ] && set -- "${rest[@]}"
  if [ -f "$dir/config.yaml" ]; then  # resumed with the line as it is now: errwise refuses a config other than the saved one
    OMP_NUM_THREADS=1 errwise run "$@" --output_dir "$dir" >> "$dir.log" 2>&1
  else
    OMP_NUM_THREADS=1 errwise run "$@" --output_dir "$dir" > "$dir.log" 2>&1
  fi
  echo "$(date +%T) $name: $(tail -1 "$dir.log")"
  # a finished run's record goes into the repository at once (benchmarks/keep_runs.py), checkpoints left in OUT_DIR
  if [ -n "$kept" ] && [ -f "$dir/summary.json" ]; then python benchmarks/keep_runs.py "$dir" --dest "$kept"; fi
}
export -f run_one keep_if_done too_late; export out kept start_before
grep -v '^\s*\(#\|$\)' "$jobs" | xargs -P "$workers" -L 1 bash -c 'run_one "$@"' _
