"""Which pairs does a confusion record name, and how many of a finished run's test errors fall on them?

    python benchmarks/rival_coverage.py runs/fcre10/errwise-3

Loads the run's last checkpoint (`Extractor.load`), scores its memory instances over every learned relation, takes
each instance's rival (the other relation with the best probability), and counts the test errors after the last task
(predictions/) whose pair {gold, answer} is a rival pair; beside it, as many pairs of the initial error cases' record
(the most counted {gold, answer} pairs of error_cases/task_XX.jsonl) and the most confused test pairs themselves (the
ceiling). Prints figures; asserts nothing. Needs the run's checkpoints (a run folder, not a kept record).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from errwise.extractor import Extractor
from errwise.run import make_stream


def pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def top(counts: Counter, k: int) -> list[tuple[str, str]]:
    """The k most counted pairs, ties by relation ids (as errwise's records rank them)."""
    return sorted(counts, key=lambda p: (-counts[p], p))[:k]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--dtype", default=None, help="the model's dtype [the run's]")
    args = ap.parse_args()
    ext = Extractor.load(args.run, dtype=args.dtype)
    stream = make_stream(ext.cfg)
    by_uid = {x.uid: x for t in stream.tasks for x in t.train}
    last = sorted((args.run / "memory").glob("task_*.json"))[-1]
    memory = [by_uid[u] for uids in json.loads(last.read_text()).values() for u in uids]
    rivals = Counter()
    for x, answer in zip(memory, ext.predict(memory, top_k=2)):
        rivals[pair(x.relation, next(r for r, _ in answer["top"] if r != x.relation))] += 1
    errors = Counter()
    task = last.stem.split("_")[1]
    for line in (args.run / "predictions" / f"task_{task}.jsonl").read_text().splitlines():
        row = json.loads(line)
        if not row["correct"]:
            errors[pair(row["gold"], row["pred"])] += 1
    initial = Counter()
    for path in sorted((args.run / "error_cases").glob("task_??.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if not row["correct"]:
                initial[pair(row["gold"], row["pred"])] += 1
    n, k = sum(errors.values()), len(rivals)
    name = {r.id: r.name for r in stream.relations}
    rows = [
        ("rival pairs of the final memory", sum(errors[p] for p in rivals)),
        ("as many most counted initial-error pairs", sum(errors[p] for p in top(initial, k))),
        ("as many most confused test pairs (ceiling)", sum(c for _, c in errors.most_common(k))),
    ]
    print(f"{args.run}: {len(memory)} memory instances, {k} rival pairs, {n} test errors after the last task")
    for label, hit in rows:
        print(f"  {label:45s} {hit:6d} errors ({100 * hit / max(n, 1):.1f} %)")
    print("  most confused test pairs (a rival pair?):")
    for (a, b), c in errors.most_common(10):
        print(f"    {c:5d}  {name[a]} / {name[b]}  {'rival' if (a, b) in rivals else '-'}")


if __name__ == "__main__":
    main()
