"""Acceptance of a served instructor on real error cases: LE and LEC blocks accepted or rejected (per reason) by the
product's validation, and lessons distilled from the same cases, through the code `errwise run` uses
(`methods.instructor.ask_instructor`, `methods.lessons.distil`). Prints figures; writes every block to --out.

    python benchmarks/instructor_accept.py --base-url http://127.0.0.1:8080/v1 --model qwen --out runs/accept

Error cases: by default the first --tasks tasks of --config (order 0) with the target's zero-shot predictions
of each task's training data among the relations seen so far (the initial responses errwise mines before
training the first task; no memory, as nothing is trained); or, with --run, a finished run folder's
`error_cases/task_XX.jsonl` (initial responses, memory included). The zero-shot cases are written to
--out/error_cases/ in the same format and read back by a rerun. LEC's similar right answers are found with
the base target's hidden states (a run's own used the model of that moment). Replies are cached under
--out/cache, so a rerun costs nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter
from pathlib import Path

from errwise.config import InstructorConfig, from_dict, load_yaml
from errwise.instructor.generate import make_backend, normalise
from errwise.methods.errwise import error_case_rows
from errwise.methods.instructor import ask_instructor, plan_requests, request_messages
from errwise.methods.lessons import case_groups, distil
from errwise.model import load_model, load_tokenizer, pick_device, pick_dtype
from errwise.run import make_stream, predict_with, resume_config


def zero_shot_cases(cfg, stream, model, tok, tasks: int) -> list[list[tuple]]:
    """Per task: (instance, source, predicted relation) for its training data, predicted among the seen relations."""
    out = []
    for task in stream.tasks[:tasks]:
        seen = tuple(stream.relation(r) for r in stream.seen_relations(task.index))
        preds = predict_with(cfg, model, tok, list(task.train), seen, desc=f"T{task.index + 1} zero-shot")
        out.append([(x, "train", p) for x, p in zip(task.train, preds)])
    return out


def run_cases(run: Path, stream, tasks: int) -> list[list[tuple]]:
    """Per task: the initial responses a finished run recorded in error_cases/task_XX.jsonl."""
    by_uid = {x.uid: x for t in stream.tasks for x in (*t.train, *t.val, *t.test)}
    out = []
    for t in range(tasks):
        rows = [json.loads(s) for s in (run / "error_cases" / f"task_{t:02d}.jsonl").read_text().splitlines()]
        out.append([(by_uid[r["uid"]], r["source"], r["pred"]) for r in rows])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", required=True, help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1")
    p.add_argument("--model", required=True, help="the served model name")
    p.add_argument("--out", required=True, help="folder for the blocks, lessons, summary and the reply cache")
    p.add_argument("--run", help="take the error cases from this finished run folder instead")
    p.add_argument("--config", default="configs/cpu_forget.yaml")
    p.add_argument("--data-path", default=os.environ.get("ERRWISE_FEWREL_DIR", "../shared/data/fewrel"))
    p.add_argument("--tasks", type=int, default=2, help="the first K tasks")
    p.add_argument("--errors", type=int, default=6, help="error cases per task and mode (--instructor.max_errors)")
    p.add_argument("--lesson-groups", type=int, default=3, help="case groups per task (--lessons.max_groups)")
    p.add_argument("--per-error", type=int, default=2)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--timeout", type=float, default=600.0)
    args = p.parse_args()

    if args.run:
        cfg = resume_config(Path(args.run))
    else:
        d = load_yaml(args.config)
        d["data"]["path"] = args.data_path
        cfg = from_dict(d, source=args.config)
    stream = make_stream(cfg)
    device = pick_device(cfg.model.device)
    tok = load_tokenizer(cfg.model.name)
    model = load_model(cfg.model.name, device=device, dtype=pick_dtype(cfg.model.dtype, device), lora=False).eval()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t = time.time()
    done = all((out / "error_cases" / f"task_{i:02d}.jsonl").is_file() for i in range(args.tasks))
    if args.run or done:  # a rerun reads back the zero-shot cases it wrote, as a run's
        cases = run_cases(Path(args.run) if args.run else out, stream, args.tasks)
    else:
        cases = zero_shot_cases(cfg, stream, model, tok, args.tasks)
        (out / "error_cases").mkdir(exist_ok=True)
        for i, c in enumerate(cases):
            (out / "error_cases" / f"task_{i:02d}.jsonl").write_text(error_case_rows(c))
    wrong = sum(p != x.relation for c in cases for x, _, p in c)
    print(f"error cases: {wrong} of {sum(map(len, cases))} responses in {args.tasks} tasks ({time.time() - t:.0f} s)")
    taken = {normalise(x.text) for t in stream.tasks for x in (*t.test, *t.train)}
    summary = {"base_url": args.base_url, "model": args.model, "source": args.run or f"{args.config} zero-shot"}
    for mode in ("le", "lec"):
        ic = InstructorConfig(
            backend="openai", base_url=args.base_url, model=args.model, mode=mode, per_error=args.per_error,
            max_errors=args.errors,
            temperature=args.temperature, max_tokens=args.max_tokens, timeout=args.timeout,
            cache_dir=str(out / "cache"),
        )  # fmt: skip
        backend = make_backend(ic, out)
        rows, first = [], None
        taken_here = set(taken)  # each mode is a run of its own: LE's sentences are no duplicates for LEC
        for t, task_cases in enumerate(cases):
            kw = {"batch_size": cfg.eval.batch_size, "max_length": cfg.train.max_length}
            requests = plan_requests(model, tok, task_cases, ic, stream.relation, **kw)
            if not requests:
                continue
            first = first or request_messages(requests[0], ic)
            known = {stream.relation(r).name.lower(): stream.relation(r) for r in stream.seen_relations(t)}
            _, task_rows = ask_instructor(backend, ic, requests, known, taken_here, f"gen/T{t + 1}")
            for r in task_rows:
                x = next(req[0] for req in requests if req[0].uid == r["error_uid"])
                r["error_case"] = {"sentence": x.text, "head": x.head_text, "tail": x.tail_text}
                r["gold_name"], r["pred_name"] = stream.relation(r["gold"]).name, stream.relation(r["pred"]).name
            rows += task_rows
        (out / f"{mode}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        accepted = sum(r["status"] == "accepted" for r in rows)
        reasons = Counter(r["reason"] for r in rows if r["status"] == "rejected")
        cost = backend.stats()
        summary[mode] = {"accepted": accepted, "blocks": len(rows), "rejected": dict(reasons), "cost": cost}
        summary[f"{mode}_first_request"] = first
        print(
            f"{mode.upper()}: accepted {accepted}/{len(rows)} blocks from {len({r['error_uid'] for r in rows})} "
            f"error cases; rejected: {dict(reasons)}; {cost['calls']} calls ({cost['hits']} cached), "
            f"{cost['prompt_tokens']} prompt + {cost['completion_tokens']} completion tokens, "
            f"{cost['seconds']:.0f} s; load {os.getloadavg()[0]:.2f}",
            flush=True,
        )

    ic = InstructorConfig(
        backend="openai", base_url=args.base_url, model=args.model, temperature=args.temperature,
        max_tokens=args.max_tokens, timeout=args.timeout, cache_dir=str(out / "cache"),
    )  # fmt: skip
    backend = make_backend(ic, out)
    lessons, replies, malformed = [], [], 0
    for t, task_cases in enumerate(cases):
        groups = case_groups(task_cases, args.lesson_groups)
        new, bad, rows = distil(backend, ic, 1, groups, stream.relation, t)
        lessons += new
        replies += rows
        malformed += bad
    (out / "lessons.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lessons))
    (out / "lesson_replies.jsonl").write_text("".join(json.dumps(x) + "\n" for x in replies))
    cost = backend.stats()
    summary["lessons"] = {"groups": len(replies), "well_formed": len(lessons), "malformed": malformed, "cost": cost}
    print(
        f"lessons: {len(lessons)} well formed from {len(replies)} groups, {malformed} malformed replies or blocks; "
        f"{cost['calls']} calls ({cost['hits']} cached), {cost['prompt_tokens']} prompt + "
        f"{cost['completion_tokens']} completion tokens, {cost['seconds']:.0f} s; load {os.getloadavg()[0]:.2f}"
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
