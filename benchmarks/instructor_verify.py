"""The instructor's meaning check (`--instructor.verify`) on the blocks finished runs accepted: how many it keeps,
what it answers for the others, and its agreement with a person's reading where one is given. Prints figures;
writes one row per block to --out/verify_CHECK.jsonl. Uses the code `errwise run` uses
(`methods.instructor.meaning_check`) through the same cached backend, so a rerun costs nothing.

    python benchmarks/instructor_verify.py results/cpu_forget/bf16/le-0 results/cpu_forget/bf16/lec-0 \
        --base-url http://127.0.0.1:8102/v1 --model qwen2.5-coder-1.5b-instruct --out runs/verify \
        --readings benchmarks/instructor_readings.json --check choice|statement

--readings: a JSON object {"<start of the sentence>": true | false} (true: a right instance of the requested
relation in the right direction), written by a person before the check was run on those blocks.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from errwise.config import InstructorConfig
from errwise.data.formats import read_relations
from errwise.data.types import RelationInstance
from errwise.instructor.generate import find_span, make_backend, normalise, tokenize
from errwise.methods.instructor import meaning_check


def accepted_blocks(run: Path):
    """(run name, instance, gold, wrong) for every block a run's instructor accepted, in the files' order."""
    rels = read_relations(run / "relations.json")
    for path in sorted((run / "instructor").glob("task_*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row["status"] != "accepted":
                continue
            b = row["block"]
            toks = tokenize(b["Sentence"])
            x = RelationInstance(row["uid"], toks, find_span(toks, b["Head"]), find_span(toks, b["Tail"]), row["gold"])
            yield run.name, x, rels[row["gold"]], rels[row["pred"]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="finished run folders (or kept records) of method instructor")
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--readings", type=Path, help="a person's readings of some blocks (see above)")
    p.add_argument("--check", default="choice", choices=["choice", "statement"], help="instructor.verify")
    p.add_argument("--only-read", action="store_true", help="check only the blocks --readings reads")
    args = p.parse_args()
    ic = InstructorConfig(backend="openai", base_url=args.base_url, model=args.model, verify=args.check)
    args.out.mkdir(parents=True, exist_ok=True)
    backend = make_backend(ic, args.out)
    readings = json.loads(args.readings.read_text()) if args.readings else {}
    readings.pop("_about", None)
    rows, agree = [], Counter()
    for name, x, gold, wrong in (b for run in args.runs for b in accepted_blocks(run)):
        reading = next((v for k, v in readings.items() if normalise(x.text).startswith(normalise(k))), None)
        if args.only_read and reading is None:
            continue
        answered = meaning_check(backend, ic, x, gold, wrong)
        rows.append({"run": name, "uid": x.uid, "gold": gold.name, "wrong": wrong.name, "sentence": x.text,
                     "head": x.head_text, "tail": x.tail_text, "kept": answered is None, "answered": answered,
                     "reading": reading})  # fmt: skip
        if reading is not None:
            agree[(reading, answered is None)] += 1
    (args.out / f"verify_{args.check}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for run in sorted({r["run"] for r in rows}):
        mine = [r for r in rows if r["run"] == run]
        why = Counter(r["answered"] for r in mine if not r["kept"])
        print(f"{run}: kept {sum(r['kept'] for r in mine)} of {len(mine)} accepted blocks; rejected as {dict(why)}")
    if agree:
        for reading, label in ((True, "right"), (False, "wrong")):
            print(f"read {label}: kept {agree[(reading, True)]}, rejected {agree[(reading, False)]}")
    cost = backend.stats()
    print(f"cost: {cost}")


if __name__ == "__main__":
    main()
