"""The continual loop, one function per phase: for each task: begin -> train -> memory -> [consolidate] -> evaluate
-> end -> persist, log.

A run folder is the contract (docs/run-folder.md). `metrics.jsonl` gets its line last, after the
checkpoint, memory and predictions of the task are on disk: its length is the number of completed tasks,
so a crash loses at most the task in progress and `errwise run RUN_DIR` resumes after the last line.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from errwise import distributed, environment, metrics
from errwise.config import RunConfig, flatten, load_saved_config, save_yaml, to_dict
from errwise.data.formats import load_corpus, load_fcre
from errwise.data.stream import build_stream, fcre_stream, subsample
from errwise.data.types import RelationInstance, TaskStream
from errwise.errors import ErrwiseError
from errwise.evaluate import content_free_bonus, embed, predict, score_all
from errwise.memory import select
from errwise.methods import TaskContext, build_method
from errwise.model import load_model, load_tokenizer, pick_device, pick_dtype, resolve_model_path, save_checkpoint
from errwise.progress import progress
from errwise.rundir import (
    append_line,
    atomic_write,
    check_resumable,
    claim_run_dir,
    completed_tasks,
    holds_run_dir,
    write_checkpoint,
)
from errwise.tracking import open_tracker
from errwise.train import TrainStats, step_budget, train


def make_stream(cfg: RunConfig) -> TaskStream:
    d = cfg.data
    if d.split == "fcre":  # the few-shot files fix the split and the tasks
        return fcre_stream(
            load_fcre(d.path, d.shots),
            order=d.order,
            seed=d.order_seed,
            num_tasks=d.num_tasks,
            val_size=d.val_size,
            max_train=d.max_train,
            max_val=d.max_val,
            max_test=d.max_test,
        )
    corpus = load_corpus(d.dataset, d.path)
    return build_stream(
        corpus,
        order=d.order,
        num_tasks=d.num_tasks,
        relations_per_task=d.relations_per_task,
        split=d.split,
        train_size=d.train_size,
        val_size=d.val_size,
        test_size=d.test_size,
        max_train=d.max_train,
        max_test=d.max_test,
        max_val=d.max_val,
        split_seed=d.split_seed,
    )


def default_run_dir(cfg: RunConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = Path(cfg.data.dataset).stem + ("-fcre" if cfg.data.split == "fcre" else "")
    return Path("runs") / f"{name}-{cfg.method.name}-order{cfg.data.order}-{stamp}"


def resume_config(run_dir: Path) -> RunConfig:
    if not (run_dir / "config.yaml").is_file():
        raise ErrwiseError(f"{run_dir} has no config.yaml: not an errwise run folder (pass a config file instead)")
    return load_saved_config(run_dir / "config.yaml")


def _comparable(cfg: RunConfig) -> dict:
    d = to_dict(cfg)
    d.pop("output_dir")
    return d


def load_run_model(cfg: RunConfig, device: torch.device, adapter: Path | None = None):
    """The run's model: fresh LoRA adapters, or a task checkpoint's (`adapter`)."""
    m = cfg.model
    return load_model(
        m.name,
        device=device,
        dtype=pick_dtype(m.dtype, device),
        lora=m.lora,
        lora_r=m.lora_r,
        lora_alpha=m.lora_alpha,
        lora_dropout=m.lora_dropout,
        lora_targets=m.lora_targets,
        adapter=adapter,
    )


def predict_with(cfg: RunConfig, model, tok, instances, candidates, *, hints=None, desc="predict") -> list[str]:
    """Class-incremental prediction with the run's evaluation settings (`eval.calibrate`: the content-free bonus,
    computed with the model as it is now)."""
    kw = _scoring(cfg, model, tok, candidates, hints=hints, desc=desc)
    return predict(model, tok, instances, candidates, search=cfg.eval.search, **kw)


def scores_with(cfg: RunConfig, model, tok, instances, candidates, *, hints=None, desc="score") -> torch.Tensor:
    """Every candidate's exact score for every instance (N, C), each label scored in full, with the run's evaluation
    settings: its argmax is `predict_with`'s answer."""
    kw = _scoring(cfg, model, tok, candidates, hints=hints, desc=desc)
    return score_all(model, tok, instances, candidates, **kw)


def _scoring(cfg: RunConfig, model, tok, candidates, **kw) -> dict:
    """The scoring options of the run's evaluation settings, `hints` and `desc` included."""
    e = cfg.eval
    return dict(
        batch_size=e.batch_size,
        list_candidates=e.list_candidates,
        score=e.score,
        max_length=cfg.train.max_length,
        bonus=_bonus(cfg, model, tok, candidates),
        **kw,
    )


def _bonus(cfg: RunConfig, model, tok, candidates) -> torch.Tensor | None:
    """`eval.calibrate content_free`: the bonus of the model as it is now over `candidates`; else None."""
    if cfg.eval.calibrate != "content_free":
        return None
    return content_free_bonus(
        model, tok, candidates, max_length=cfg.train.max_length, list_candidates=cfg.eval.list_candidates
    )


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


def _write_json(path: Path, obj: object) -> None:
    atomic_write(path, json.dumps(obj, indent=1).encode())


@holds_run_dir
def run(cfg: RunConfig, run_dir: Path | None = None) -> Path:
    """Run (or resume) a continual stream; returns the run folder."""
    run_dir = Path(run_dir or cfg.output_dir or default_run_dir(cfg))
    cfg, done = resume_or_start(cfg, run_dir)
    method = build_method(cfg)  # an unknown method fails before anything is loaded or written
    ddp_device = distributed.init()  # under `accelerate launch`: this process's device
    main = distributed.is_main()  # only process 0 writes the run folder; the others write to a scratch folder
    method_dir = run_dir if main else Path(tempfile.mkdtemp(prefix=f"errwise-rank{distributed.rank()}-"))
    stream = make_stream(cfg)
    check_eval_split(cfg, stream)
    check_resumable(run_dir, done, stream, cfg.model.lora)
    src, shared = shared_start(cfg, stream) if cfg.start_from and not done else (None, [])
    tok = load_tokenizer(cfg.model.name)  # a model that cannot be found fails before the run folder is written
    steps = sum(r["train_steps"] for r in [*done, *shared])
    tracker = open_tracker(cfg.report_to if main else "none", run_dir, steps)
    if main:
        prepare_run_dir(cfg, run_dir, stream, done)
    if shared:
        if main:
            copy_shared_tasks(src, shared, run_dir, stream)
        distributed.barrier()
        done = completed_tasks(run_dir)
        check_resumable(run_dir, done, stream, cfg.model.lora)
    device = ddp_device or pick_device(cfg.model.device)
    seed_everything(cfg.train.seed)
    model = load_run_model(cfg, device, run_dir / "checkpoints" / f"task_{len(done) - 1:02d}" if done else None)
    if main:
        env = environment.collect(resolve_model_path(cfg.model.name), model, tok, device)
        append_line(run_dir / "environment.jsonl", {"from_task": len(done), **env})
    memory = load_memory(run_dir, stream, len(done))
    matrix = [row["accuracy_row"] for row in done]
    start_time = time.time() - sum(row["seconds"] for row in done)

    for task in progress(stream.tasks[len(done) :], desc="tasks"):
        t0 = time.time()
        phases: dict[str, float] = {}
        seed_everything(cfg.train.seed + 1000 * task.index)  # per-task seed: a resumed run repeats it exactly
        ctx = task_context(cfg, stream, task, memory, model, tok, method, method_dir)
        first = first_round_context(cfg, ctx)
        method.begin_task(first)
        phases["begin"] = time.time() - t0
        with timed(phases, "train"):
            stats, consolidate_steps = train_phase(cfg, ctx, method, tracker.step_logger("train/loss"), first)
        with timed(phases, "memory"):
            memory = memory_phase(cfg, ctx, method, memory)
        consolidation = None
        if consolidate_steps:
            with timed(phases, "consolidate"):
                after = dataclasses.replace(ctx, memory=memory)  # every seen relation's memory
                consolidation = consolidation_phase(
                    cfg, after, method, consolidate_steps, tracker.step_logger("consolidate/loss")
                )
        with timed(phases, "evaluate"):
            rows = evaluate_phase(cfg, ctx)
        with timed(phases, "end"):
            method.end_task(dataclasses.replace(ctx, memory=memory))  # the memory as the task leaves it
        row = metrics.accuracy_row(rows, task.index + 1)
        matrix.append(row)
        subsampled = eval_subsample(cfg, stream, task.index)
        line = metrics_line(task, rows, row, stats, consolidation, time.time() - t0, phases, subsampled)
        if main:
            persist(cfg, run_dir, stream, task, model, memory, rows, matrix, line)
            log_task(stream, task, line, stats)
            tracker.log_task(line)
        distributed.barrier()

    tracker.close()
    return finish(cfg, run_dir, matrix, start_time, main, method_dir)


# --- the phases of run(), in the order it calls them ------------------------------------------------------


def resume_or_start(cfg: RunConfig, run_dir: Path) -> tuple[RunConfig, list[dict]]:
    """The config to run and the completed tasks' metrics lines: a run folder with completed tasks resumes with
    its saved config (which must equal `cfg` but for output_dir)."""
    done = completed_tasks(run_dir)
    if done:
        saved = resume_config(run_dir)
        if _comparable(saved) != _comparable(cfg):
            raise ErrwiseError(
                f"{run_dir} already holds {len(done)} completed task(s) of another config; resume it with "
                f"`errwise run {run_dir}` or pass another --output_dir"
            )
        cfg = saved
    return cfg, done


START_FROM_METHODS = ("finetune", "replay", "joint", "errwise")
"""Methods whose state after a task is the run folder's per-task files alone (checkpoint, memory, predictions,
error cases): a task of theirs can be copied into another run. The lessons bank and the instructor's data are
written across tasks, and are not copied."""
FIRST_TASK_ALIKE = ("finetune", "replay", "joint")
"""Methods whose first task is one computation: no memory yet, so each trains on the task's own examples, then
selects the same memory with the same model. One's first task may be copied into another's run when neither has a
consolidation round after it (tests/test_fcre.py compares such copies with runs from scratch)."""
FIRST_TASK_FREE = ("method.name", "train.consolidate", "train.consolidate_first", "train.defer_memory", "train.budget")
"""What may differ between two such runs: without a round after task 1, the round's share of the steps and the
deferred memory (empty at task 1) act from task 2 on; so does the step budget (`replay` counts the task's instances
and the memory, empty at task 1; `own` the method's examples, which at task 1 are the task's instances for all three),
so the field's joint (`--train.budget own`) may start from a replay run too."""


def _first_task_alike(cfg: RunConfig) -> bool:
    return cfg.method.name in FIRST_TASK_ALIKE and (cfg.train.consolidate == 0 or not cfg.train.consolidate_first)


def shared_start(cfg: RunConfig, stream: TaskStream) -> tuple[Path, list[dict]]:
    """(cfg.start_from, the metrics lines of the completed first tasks this run shares with it). Checked
    before the run folder is written: the same config but for the order, and the same tasks (relations and
    instances) in the same places."""
    src = Path(cfg.start_from)
    if cfg.method.name not in START_FROM_METHODS:
        raise ErrwiseError(
            f"start_from copies tasks of {', '.join(START_FROM_METHODS)} runs only; method {cfg.method.name} keeps "
            "state across tasks outside the per-task files: run it without start_from"
        )
    src_done = completed_tasks(src)
    if not src_done:
        raise ErrwiseError(f"start_from {src} holds no completed task (no metrics.jsonl lines): nothing to copy")
    src_cfg = resume_config(src)
    mine, theirs = _shared_config(cfg), _shared_config(src_cfg)
    first_only = mine != theirs and _first_task_alike(cfg) and _first_task_alike(src_cfg)
    if first_only:  # another of finetune, replay, joint: only the first task is the same computation
        mine, theirs = ({k: v for k, v in d.items() if k not in FIRST_TASK_FREE} for d in (mine, theirs))
    if mine != theirs:
        key = next(k for k in sorted(mine.keys() | theirs.keys()) if mine.get(k) != theirs.get(k))
        raise ErrwiseError(
            f"start_from {src} was run with {key} = {theirs.get(key)!r}, this run has {mine.get(key)!r}; only "
            "data.order may differ (and the method among finetune, replay, joint without a round after task 1)"
        )
    src_stream = make_stream(src_cfg)
    k = 0
    while k < min(len(src_done), 1 if first_only else len(stream.tasks)) and _same_task(
        src_stream.tasks[k], stream.tasks[k]
    ):
        k += 1
    if k == 0:
        raise ErrwiseError(
            f"start_from {src}: its first task is not this run's (other relations or instances); nothing to copy"
        )
    check_resumable(src, src_done[:k], src_stream, cfg.model.lora)
    return src, src_done[:k]


def _shared_config(cfg: RunConfig) -> dict:
    """The config as a flat dict, without what may differ between a run and the one it starts from."""
    flat = flatten(_comparable(cfg))
    return {k: v for k, v in flat.items() if k not in ("start_from", "data.order", "data.order_seed")}


def _same_task(a, b) -> bool:
    uids = lambda t: [[x.uid for x in xs] for xs in (t.train, t.val, t.test)]  # noqa: E731
    return a.relations == b.relations and uids(a) == uids(b)


def copy_shared_tasks(src: Path, lines: list[dict], run_dir: Path, stream: TaskStream) -> None:
    """The first len(lines) tasks of `src` copied into `run_dir`: their checkpoint, memory, predictions, error
    cases, environment lines, the accuracy matrix of those tasks (a report reads it before the run's own next task
    rewrites it), and their metrics `lines` last (each marked `copied_from`), so an interrupted copy is redone."""
    k = len(lines)
    for j in range(k):
        name = f"task_{j:02d}"
        shutil.copytree(src / "checkpoints" / name, run_dir / "checkpoints" / name, dirs_exist_ok=True)
        for sub, pattern in (("memory", f"{name}.json"), ("predictions", f"{name}.jsonl"), ("error_cases", f"{name}*")):
            for path in sorted((src / sub).glob(pattern)):
                (run_dir / sub).mkdir(exist_ok=True)
                atomic_write(run_dir / sub / path.name, path.read_bytes())
    env = src / "environment.jsonl"
    for line in env.read_text().splitlines() if env.is_file() else []:
        row = json.loads(line)
        if row.get("from_task", 0) < k:
            append_line(run_dir / "environment.jsonl", {**row, "copied_from": str(src), "copied_tasks": k})
    tasks = [list(t.relations) for t in stream.tasks]
    _write_json(run_dir / "accuracy_matrix.json", {"tasks": tasks, "matrix": [line["accuracy_row"] for line in lines]})
    for line in lines:
        append_line(run_dir / "metrics.jsonl", {**line, "copied_from": str(src)})
    print(f"copied T1-T{k} from {src}")


def check_eval_split(cfg: RunConfig, stream: TaskStream) -> None:
    if cfg.eval.split == "val" and not any(t.val for t in stream.tasks):
        raise ErrwiseError(
            f"eval.split is val but the {cfg.data.split} split of {cfg.data.dataset} holds no validation "
            "instances; set data.val_size > 0 (fewrel or fcre split) or evaluate with eval.split test"
        )


def prepare_run_dir(cfg: RunConfig, run_dir: Path, stream: TaskStream, done: list[dict]) -> None:
    """The run folder claimed (its lock; torn bytes and leftover temp files of a crash dropped), the resolved
    config, the folders of per-task files, and the relations' names and descriptions."""
    run_dir.mkdir(parents=True, exist_ok=True)
    claim_run_dir(run_dir, done)
    save_yaml(cfg, run_dir / "config.yaml")
    for sub in ("predictions", "checkpoints", "memory"):
        (run_dir / sub).mkdir(exist_ok=True)
    _write_json(
        run_dir / "relations.json",
        {r.id: {"name": r.name, "description": r.description} for r in stream.relations},
    )


def load_memory(run_dir: Path, stream: TaskStream, n_done: int) -> dict[str, list[RelationInstance]]:
    """The replay memory after the last completed task ({} for a fresh run)."""
    if not n_done:
        return {}
    by_uid = {x.uid: x for t in stream.tasks for x in (*t.train, *t.val, *t.test)}
    saved = json.loads((run_dir / "memory" / f"task_{n_done - 1:02d}.json").read_text())
    print(f"resuming {run_dir} after task {n_done}/{len(stream.tasks)}")
    return {rel: [by_uid[u] for u in uids] for rel, uids in saved.items()}


def task_context(cfg: RunConfig, stream, task, memory, model, tok, method, method_dir: Path) -> TaskContext:
    """What the method sees of task `task`; its `predict` answers among every seen relation, sharded over
    processes, with the method's hints; its `scores` gives every seen relation's exact score."""
    seen = tuple(stream.relation(r) for r in stream.seen_relations(task.index))

    def predict_seen(instances, desc="predict"):
        return distributed.map_sharded(lambda part: _predict(part, desc), instances)

    def _predict(instances, desc):
        return predict_with(cfg, model, tok, instances, seen, hints=method.hints(instances), desc=desc)

    def score_seen(instances, desc="score"):
        return distributed.map_sharded(lambda part: _score(part, desc), instances)

    def _score(instances, desc):
        scores = scores_with(cfg, model, tok, instances, seen, hints=method.hints(instances), desc=desc)
        return scores.tolist()

    return TaskContext(cfg, stream, task, seen, memory, model, tok, method_dir, predict_seen, score_seen)


@contextmanager
def timed(phases: dict[str, float], name: str):
    """Seconds spent in the block, as phases[name] (metrics.jsonl `phase_seconds`)."""
    t = time.time()
    yield
    phases[name] = time.time() - t


def _train_kwargs(tc) -> dict:
    return {
        "epochs": tc.epochs,
        "batch_size": tc.batch_size,
        "lr": tc.lr,
        "weight_decay": tc.weight_decay,
        "warmup_ratio": tc.warmup_ratio,
        "max_length": tc.max_length,
    }


def first_round_context(cfg: RunConfig, ctx: TaskContext) -> TaskContext:
    """What the method sees before and in the task's first round: with train.defer_memory no memory (neither in
    the initial responses nor in the training examples; it is replayed in the consolidation round), else ctx."""
    return dataclasses.replace(ctx, memory={}) if cfg.train.defer_memory else ctx


def train_phase(
    cfg: RunConfig, ctx: TaskContext, method, on_step=None, first: TaskContext | None = None
) -> tuple[TrainStats, int]:
    """Train on the method's examples of the task (from `first`, the context the method sees in this round,
    default ctx); returns the stats and the steps left for consolidation. The budget counts ctx's memory."""
    tc, task = cfg.train, ctx.task
    examples = method.training_examples(first or ctx)
    budget = len(task.train) + len(ctx.memory_instances()) if tc.budget == "replay" else len(examples)
    steps = tc.max_steps or step_budget(budget, tc.epochs, tc.batch_size)
    # The consolidation round takes its steps out of the task's budget, so budgets stay comparable.
    consolidate_steps = min(round(tc.consolidate * steps), steps - 1) if cfg.method.memory_per_relation else 0
    if task.index == 0 and not tc.consolidate_first:
        consolidate_steps = 0
    stats = train(
        ctx.model,
        ctx.tok,
        examples,
        max_steps=steps - consolidate_steps,
        seed=tc.seed + 1000 * task.index,
        desc=f"T{task.index + 1} train",
        on_step=on_step,
        **_train_kwargs(tc),
    )
    return stats, consolidate_steps


def memory_phase(cfg: RunConfig, ctx: TaskContext, method, memory: dict) -> dict[str, list[RelationInstance]]:
    """The memory with the task's relations added (selected with the trained model)."""
    if cfg.method.memory_per_relation > 0:
        task = ctx.task
        new = update_memory(cfg, ctx.model, ctx.tok, task.train, task.relations, task.index, method.held_out(ctx))
        memory = {**memory, **distributed.broadcast(new)}  # k-means may differ in the last bit: use process 0's
    return memory


def consolidation_phase(cfg: RunConfig, ctx: TaskContext, method, steps: int, on_step=None) -> TrainStats:
    """A short second round on the method's consolidation examples (ctx.memory holds every seen relation)."""
    tc, task = cfg.train, ctx.task
    more = method.consolidation_examples(ctx)
    return train(
        ctx.model,
        ctx.tok,
        more,
        max_steps=steps,
        seed=tc.seed + 1000 * task.index + 1,
        desc=f"T{task.index + 1} consolidate",
        on_step=on_step,
        **_train_kwargs(tc),
    )


def evaluate_phase(cfg: RunConfig, ctx: TaskContext) -> list[dict]:
    """Predictions on every seen task's test (or validation) instances: the rows of predictions/task_XX.jsonl."""
    stream, task = ctx.stream, ctx.task
    task_of = {r: t.index for t in stream.tasks for r in t.relations}
    test = eval_instances(stream, task.index, cfg.eval.split, eval_subsample(cfg, stream, task.index))
    return prediction_rows(test, ctx.predict(test, desc=f"T{task.index + 1} eval"), task_of)


def eval_subsample(cfg: RunConfig, stream: TaskStream, task_index: int) -> int | None:
    """Test instances per relation evaluated after task `task_index`: eval.intermediate_test before the last task,
    None (all) after it and on the validation split."""
    last = task_index == len(stream.tasks) - 1
    return None if last or cfg.eval.split != "test" else cfg.eval.intermediate_test


def metrics_line(
    task, rows, row, stats: TrainStats, consolidation: TrainStats | None, seconds, phases, subsampled=None
) -> dict:
    """The task's line of metrics.jsonl; `subsampled`: the eval_subsample the rows were predicted with."""
    return {
        "task": task.index,
        "relations": list(task.relations),
        "seen_accuracy": metrics.seen_accuracy(rows),
        "accuracy_row": row,
        "n_test": len(rows),
        "eval_subsample": subsampled,
        "train_steps": stats.steps + (consolidation.steps if consolidation else 0),
        "train_examples": stats.examples,
        "train_tokens": stats.tokens + (consolidation.tokens if consolidation else 0),
        "train_kinds": stats.kinds,
        "train_loss": stats.loss,
        "train_distill_loss": stats.distill_loss,
        "consolidation": consolidation
        and {
            "steps": consolidation.steps,
            "examples": consolidation.examples,
            "kinds": consolidation.kinds,
            "loss": consolidation.loss,
            "distill_loss": consolidation.distill_loss,
        },
        "seconds": seconds,
        "phase_seconds": phases,
    }


def persist(cfg: RunConfig, run_dir: Path, stream: TaskStream, task, model, memory, rows, matrix, line) -> None:
    """Checkpoint, memory, predictions, matrix; the metrics line last (it marks the task done)."""
    write_checkpoint(save_checkpoint, model, run_dir / "checkpoints" / f"task_{task.index:02d}")
    _write_json(
        run_dir / "memory" / f"task_{task.index:02d}.json",
        {r: [x.uid for x in xs] for r, xs in memory.items()},
    )
    write_task_results(run_dir, stream, task.index, rows, matrix, line)
    if not cfg.model.lora and task.index > 0:  # full weights are large: keep the latest only, once it is marked done
        _remove(run_dir / "checkpoints" / f"task_{task.index - 1:02d}")


def log_task(stream: TaskStream, task, line: dict, stats: TrainStats) -> None:
    """One line per task on the console."""
    tqdm.write(
        f"T{task.index + 1}/{len(stream.tasks)} seen acc {100 * line['seen_accuracy']:.1f}% "
        f"[{' '.join(f'{100 * a:.0f}' for a in line['accuracy_row'])}] loss {stats.loss:.3f} steps {stats.steps} "
        f"({line['seconds']:.0f}s)"
    )


def finish(cfg: RunConfig, run_dir: Path, matrix, start_time: float, main: bool, method_dir: Path) -> Path:
    """summary.json (process 0); the other processes remove their scratch folder."""
    done = completed_tasks(run_dir)
    seen_acc = [r["seen_accuracy"] for r in done]
    summary = {
        "method": cfg.method.name,
        "dataset": cfg.data.dataset,
        "order": cfg.data.order,
        "model": cfg.model.name,
        **metrics.summary(seen_acc, matrix),
        "wall_seconds": time.time() - start_time,
    }
    if not main:
        _remove(method_dir)
        return run_dir
    _write_json(run_dir / "summary.json", summary)
    print(
        f"done: {run_dir}  final {100 * summary['final_accuracy']:.1f}%  "
        f"average {100 * summary['average_accuracy']:.1f}%  ({summary['wall_seconds']:.0f}s)"
    )
    return run_dir


def write_task_results(
    run_dir: Path, stream: TaskStream, task_index: int, rows: list[dict], matrix: list[list[float]], line: dict
) -> None:
    """A task's predictions, the accuracy matrix so far, and its metrics.jsonl line, last (it marks the task done)."""
    _write_jsonl(run_dir / "predictions" / f"task_{task_index:02d}.jsonl", rows)
    _write_json(
        run_dir / "accuracy_matrix.json", {"tasks": [list(t.relations) for t in stream.tasks], "matrix": matrix}
    )
    append_line(run_dir / "metrics.jsonl", line)


def eval_instances(
    stream: TaskStream, task_index: int, split: str, per_relation: int | None = None
) -> list[RelationInstance]:
    """What is evaluated after task `task_index`: the test instances of every seen task (`val`: their
    validation instances instead); `per_relation`: a fixed subsample of that many per relation (stream.subsample)."""
    xs = [x for t in stream.tasks[: task_index + 1] for x in (t.val if split == "val" else t.test)]
    return xs if per_relation is None else subsample(xs, per_relation)


def prediction_rows(instances: list[RelationInstance], preds: list[str], task_of: dict[str, int]) -> list[dict]:
    """The lines of predictions/task_XX.jsonl."""
    return [
        {"uid": x.uid, "task": task_of[x.relation], "gold": x.relation, "pred": p, "correct": p == x.relation}
        for x, p in zip(instances, preds)
    ]


def update_memory(
    cfg: RunConfig, model, tok, train_data, relations, task_index: int, held_out=None
) -> dict[str, list[RelationInstance]]:
    """Memory of the relations of one task, selected after training on it (features of the trained model).
    `held_out` (per relation, from the method): instances the memory keeps as they are, counted in
    memory_per_relation; the rest is selected among the other instances."""
    mc = cfg.method
    out: dict[str, list[RelationInstance]] = {}
    for i, rel in enumerate(relations):
        kept = (held_out or {}).get(rel, [])
        xs = [x for x in train_data if x.relation == rel and x not in kept]
        n = mc.memory_per_relation - len(kept)
        feats = None
        if mc.memory_selection == "kmeans" and len(xs) > n:
            feats = embed(model, tok, xs, batch_size=cfg.eval.batch_size, max_length=cfg.train.max_length)
        out[rel] = select(xs, n, strategy=mc.memory_selection, seed=cfg.train.seed + i, features=feats) + kept
    return out


def _remove(path: Path) -> None:
    import shutil

    if path.exists():
        shutil.rmtree(path)
