"""Keep finished run folders' records in the repository, without their checkpoints.

Run folders outside the repository do not survive between sessions here, and a 5-order comparison takes longer than
one. This copies each finished run (summary.json present) into DEST/NAME without `checkpoints/` (adapters, optimiser
state), keeping what `errwise compare` and `errwise report` read: config.yaml, metrics.jsonl, accuracy_matrix.json,
summary.json, relations.json, predictions/, memory/, error_cases/, and the instructor's and lessons' records. A
predictions file over 256 kB (FCRE's 8,000 test sentences after its last task) is kept gzipped (`.jsonl.gz`, read by
compare and report as it is).

    python benchmarks/keep_runs.py runs/cal/replay-m1-0 runs/cal/joint-m1-0 --dest results/cpu_forget/bf16
    errwise compare results/cpu_forget/bf16/*     # the table, from the kept records

A kept record cannot be resumed or predicted with (no adapter); it is the evidence behind a table.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
from pathlib import Path

GZIP_OVER = 256_000
SKIP = ("checkpoints", "cache", "*.lock", "*.tmp", "events.out.tfevents.*")


def keep(run: Path, dest: Path) -> Path | None:
    if not (run / "summary.json").is_file():
        print(f"skipped {run}: not finished (no summary.json)", file=sys.stderr)
        return None
    out = dest / run.name
    tmp = dest / f".{run.name}.keeping"  # whole before it gets the record's name: an interrupted keep is redone
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(run, tmp, ignore=shutil.ignore_patterns(*SKIP))
    for big in (p for p in (tmp / "predictions").glob("*.jsonl") if p.stat().st_size > GZIP_OVER):
        big.with_suffix(".jsonl.gz").write_bytes(gzip.compress(big.read_bytes(), mtime=0))
        big.unlink()
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{run} -> {out} ({size / 1e6:.2f} MB)")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--dest", type=Path, required=True)
    args = parser.parse_args()
    args.dest.mkdir(parents=True, exist_ok=True)
    for run in args.runs:
        keep(run, args.dest)


if __name__ == "__main__":
    main()
