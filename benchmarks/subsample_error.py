"""How far the fixed intermediate-test subsample is from the full test set, measured on predictions already made.

FCRE runs score tasks 1-7 on a fixed N test instances per relation (`--eval.intermediate_test N`) and the last task
on every test instance. The last task's predictions hold the subsample too, so the same model's accuracy can be read
both ways: for each k, over the relations of tasks 1..k, accuracy on the subsample's sentences against accuracy on
all their test sentences. That difference is the subsample's error for a seen set of task k's size (the sentences,
not the model, make it: the model is the last task's for every k). Nothing is run; the records are read.

    python benchmarks/subsample_error.py results/fcre_fewrel_5shot/*-? results/fcre_fewrel_10shot/*-?
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from errwise.report import read_predictions


def acc(rows: list[dict]) -> float:
    return 100.0 * sum(r["correct"] for r in rows) / len(rows)


def run_errors(run: Path) -> list[tuple[int, int, float, float]] | None:
    """(k, subsample size, subsample accuracy, full accuracy) for k = 1 .. tasks-1, or None if the run is not a
    finished subsampled one."""
    tasks = len(list((run / "predictions").glob("task_*.jsonl*")))
    if tasks < 2:
        return None
    last = read_predictions(run, tasks - 1)
    sub = {r["uid"] for r in read_predictions(run, tasks - 2)}
    if len(sub) >= len([r for r in last if r["task"] < tasks - 1]):
        return None  # the task before the last was scored in full: no subsample
    out = []
    for k in range(1, tasks):
        seen = [r for r in last if r["task"] < k]
        picked = [r for r in seen if r["uid"] in sub]
        out.append((k, len(picked), acc(picked), acc(seen)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished run folders or kept records")
    args = ap.parse_args()
    by_k: dict[int, list[float]] = {}
    by_method: dict[str, list[float]] = {}
    sizes: dict[int, int] = {}
    used = 0
    for run in args.runs:
        errs = run_errors(run)
        if errs is None:
            print(f"{run}: skipped (not finished, or not subsampled)")
            continue
        used += 1
        print(f"{run}: " + "  ".join(f"T{k} {s:.1f}/{f:.1f}" for k, _, s, f in errs))
        for k, n, s, f in errs:
            by_k.setdefault(k, []).append(s - f)
            sizes[k] = n
        k, _, s, f = errs[-1]
        by_method.setdefault(run.name.rsplit("-", 1)[0], []).append(s - f)
    if not used:
        return
    print(f"\nsubsample minus full, last task's model, {used} runs (points):")
    print("| seen tasks | subsample sentences | mean | std | largest |")
    print("| --- | --- | --- | --- | --- |")
    for k, d in sorted(by_k.items()):
        sd = statistics.stdev(d) if len(d) > 1 else 0.0
        print(f"| 1..{k} | {sizes[k]:,} | {statistics.mean(d):+.2f} | {sd:.2f} | {max(d, key=abs):+.1f} |")
    print(f"\nby method (folder name before the seed), every task but the last (1..{max(by_k)}):")
    for name, d in sorted(by_method.items()):
        print(f"  {name}: {statistics.mean(d):+.2f} over {len(d)} runs")


if __name__ == "__main__":
    main()
