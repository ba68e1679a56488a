"""Where a run's time goes, per phase of the continual loop, from its metrics.jsonl. Prints figures only.

    python benchmarks/phases.py runs/mini/replay-0 runs/mini/errwise-0

Phases: begin (a method's preparation, e.g. errwise's initial responses), train, memory (k-means selection),
consolidate (the round over the memory with --train.consolidate), evaluate (prediction on every seen
relation's test data), end (e.g. errwise's after-training responses).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PHASES = ("begin", "train", "memory", "consolidate", "evaluate", "end")


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print(f"{'run':<32} {'tasks':>5} " + " ".join(f"{p:>15}" for p in PHASES) + f" {'total s':>9}")
    for arg in sys.argv[1:]:
        path = Path(arg) / "metrics.jsonl"
        if not path.is_file():
            sys.exit(f"error: {path} not found; pass run folders written by `errwise run`")
        lines = [json.loads(s) for s in path.read_text().splitlines() if s.strip()]
        sums = {p: sum(r["phase_seconds"].get(p, 0.0) for r in lines) for p in PHASES}
        total = sum(r["seconds"] for r in lines)
        cells = " ".join(f"{sums[p]:>8.0f} ({100 * sums[p] / total:>3.0f}%)" for p in PHASES)
        label = f"{Path(arg).parent.name}/{Path(arg).name}"
        print(f"{label:<32} {len(lines):>5} {cells} {total:>9.0f}")


if __name__ == "__main__":
    main()
