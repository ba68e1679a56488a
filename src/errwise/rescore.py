"""Evaluate a finished run's checkpoints again on more test (or validation) instances, without retraining.

cpu_mini keeps 10 test instances per relation: 160 sentences after the last task, so one sentence is 0.6
points and two methods' final accuracies differ by several points from test sampling alone. The split keeps a
prefix of each relation's shuffled test set (data/stream.py), so a larger `max_test` is a superset of the
sentences the run was scored on, and training is untouched: the checkpoint of task i is scored on the seen
relations' first N test instances. The output is a run folder of its own (config with the new
data.max_test / eval.split, the original's training lines, the new accuracies), so `errwise report` and
`errwise compare` read it like any run; it resumes like a run.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from tqdm.auto import tqdm

from errwise import metrics
from errwise.config import RunConfig, save_yaml
from errwise.errors import ErrwiseError
from errwise.methods import build_method
from errwise.model import load_tokenizer, pick_device
from errwise.progress import progress
from errwise.run import (
    _comparable,
    _write_json,
    completed_tasks,
    eval_instances,
    load_run_model,
    make_stream,
    predict_with,
    prediction_rows,
    resume_config,
    write_task_results,
)


def rescore_config(
    cfg: RunConfig,
    *,
    split: str,
    max_test: int | None,
    max_val: int | None,
    data_path: str | None,
    search: str | None = None,
    calibrate: str | None = None,
) -> RunConfig:
    data = dataclasses.replace(
        cfg.data,
        max_test=max_test,
        max_val=cfg.data.max_val if max_val is None else max_val,
        path=data_path or cfg.data.path,
    )
    return dataclasses.replace(
        cfg,
        data=data,
        eval=dataclasses.replace(
            cfg.eval,
            split=split,
            search=search or cfg.eval.search,
            calibrate=calibrate or cfg.eval.calibrate,
            intermediate_test=None,
        ),
    )


def rescore(
    run_dir: Path,
    out_dir: Path,
    *,
    split: str = "test",
    max_test: int | None = None,
    max_val: int | None = None,
    data_path: str | None = None,
    search: str | None = None,
    calibrate: str | None = None,
) -> Path:
    """Score every completed task's checkpoint of `run_dir` on the seen relations' `split` instances (the first
    `max_test` / `max_val` per relation; None = all) and write a run folder to `out_dir`; returns it.
    `search` (eval.search, default: the run's) scores with another prediction search, e.g. to measure
    `first_token` against the exact search on trained checkpoints; `calibrate` (eval.calibrate) likewise."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    lines = completed_tasks(run_dir)
    if not lines:
        raise ErrwiseError(f"{run_dir} has no completed task (no metrics.jsonl): nothing to rescore")
    if out_dir.resolve() == run_dir.resolve():
        raise ErrwiseError(f"{out_dir} is the run itself; rescoring writes a new folder")
    old = resume_config(run_dir)
    if getattr(build_method(old), "hints_at_inference", False):
        raise ErrwiseError(
            f"{run_dir} ran method {old.method.name}, whose prompts carry hints from its state during the run; "
            "rescore supports methods without inference-time hints (replay, finetune, joint, errwise)"
        )
    cfg = rescore_config(
        old, split=split, max_test=max_test, max_val=max_val, data_path=data_path, search=search, calibrate=calibrate
    )
    cfg = dataclasses.replace(cfg, output_dir=str(out_dir))
    missing = [i for i in range(len(lines)) if not (run_dir / "checkpoints" / f"task_{i:02d}").is_dir()]
    if missing:
        raise ErrwiseError(
            f"{run_dir}/checkpoints lacks task_{missing[0]:02d} (full fine-tuning keeps only the latest "
            "checkpoint): only LoRA runs can be rescored task by task"
        )
    done = completed_tasks(out_dir)
    if done:
        saved = resume_config(out_dir)
        if _comparable(saved) != _comparable(cfg):
            raise ErrwiseError(f"{out_dir} holds a rescore with other settings; pass another --out")
    stream = make_stream(cfg)
    if split == "val" and not any(t.val for t in stream.tasks):
        raise ErrwiseError(f"{run_dir}'s split holds no validation instances (data.val_size 0); rescore on test")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "predictions").mkdir(exist_ok=True)
    save_yaml(cfg, out_dir / "config.yaml")
    shutil.copy(run_dir / "relations.json", out_dir / "relations.json")
    for sub in ("memory", "error_cases"):  # what the run trained with: the report's error-case table reads it
        if (run_dir / sub).is_dir():  # each time: a run rescored while it went on has more tasks' files now
            shutil.copytree(run_dir / sub, out_dir / sub, dirs_exist_ok=True)

    task_of = {r: t.index for t in stream.tasks for r in t.relations}
    device = pick_device(cfg.model.device)
    tok = load_tokenizer(cfg.model.name)
    written = list(done)
    matrix = [line["accuracy_row"] for line in done]
    t_start = time.time()
    for i in progress(range(len(done), len(lines)), desc="rescore tasks"):
        t0 = time.time()
        # a fresh model per checkpoint (loading the cached base weights takes about a second)
        model = load_run_model(cfg, device, run_dir / "checkpoints" / f"task_{i:02d}")
        seen = tuple(stream.relation(r) for r in stream.seen_relations(i))
        test = eval_instances(stream, i, split)
        preds = predict_with(cfg, model, tok, test, seen, desc=f"T{i + 1} rescore")
        rows = prediction_rows(test, preds, task_of)
        row = metrics.accuracy_row(rows, i + 1)
        matrix.append(row)
        line = {
            **lines[i],
            "seen_accuracy": metrics.seen_accuracy(rows),
            "accuracy_row": row,
            "n_test": len(rows),
            "eval_subsample": None,  # every task on all its instances (rescore_config drops eval.intermediate_test)
            "rescored_from": str(run_dir),
            "rescore_seconds": time.time() - t0,
        }
        write_task_results(out_dir, stream, i, rows, matrix, line)
        written.append(line)
        tqdm.write(
            f"T{i + 1}: seen acc {100 * line['seen_accuracy']:.1f}% on {len(rows)} instances "
            f"(run: {100 * lines[i]['seen_accuracy']:.1f}% on {lines[i]['n_test']})"
        )

    summary_path = run_dir / "summary.json"
    if summary_path.is_file():  # the run was complete: so is the rescore
        summary = {
            **json.loads(summary_path.read_text()),
            **metrics.summary([line["seen_accuracy"] for line in written], matrix),
            "rescored_from": str(run_dir),
            "rescore_seconds": time.time() - t_start,
        }
        _write_json(out_dir / "summary.json", summary)
        print(
            f"done: {out_dir}  final {100 * summary['final_accuracy']:.1f}%  average "
            f"{100 * summary['average_accuracy']:.1f}%"
        )
    return out_dir
