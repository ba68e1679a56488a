"""A living extractor: predict the relation of new sentences, learn one more task from a user's own data, export.

`Extractor.load(path)` reads any of three folders:
- a run folder (`errwise run`): its last completed task's checkpoint and the relations seen so far; its memory
  and old test instances come from the run's dataset (loaded again only when learning);
- an extractor folder (`errwise learn`, `Extractor.save`): everything needed without the original data files,
  see `save`;
- an export folder (`errwise export`): a standard Hugging Face folder plus `errwise.json`; predict only.

Prediction is class-incremental over every learned relation, as in evaluation: each relation's label (name + end
token) is scored after the prompt (`model.score_candidates`). To give a probability to every relation, every
label is scored in full (`exhaustive=True`, the same arithmetic as the pruned exact search, which may leave
non-best labels at -inf), and the probability of a relation is the softmax of those exact scores over the
learned relations: a distribution among them, not a calibrated confidence that any of them holds.

`learn` runs one more task through the method's full cycle (begin_task, training_examples, train, memory update,
consolidation, end_task), with run()'s phase functions (`run.task_context`, `train_phase`, `memory_phase`,
`consolidation_phase`) and `run.predict_with`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from errwise.config import RunConfig, from_dict, load_saved_config, save_yaml, set_dotted, to_dict
from errwise.data.formats import _fail, _label, _record, json_line, read_relations, record_spans
from errwise.data.types import Relation, RelationInstance, Task, TaskStream
from errwise.errors import ErrwiseError, read_text
from errwise.evaluate import score_all
from errwise.methods import build_method
from errwise.model import load_tokenizer, pick_device, save_pretrained

EXTRACTOR_FILE = "extractor.json"
EXPORT_FILE = "errwise.json"
FIELDS = ("id", "text", "tokens", "head", "tail", "relation")
# plain_prompt's template (prompts.py), written into export folders for other tools; a test keeps them equal.
PROMPT_TEMPLATE = "What is the relation of the head to the tail?\nSentence: {sentence}\nHead: {head}\nTail: {tail}\n"


# ------------------------------------------------------------------------------------------------ records


def read_records(path: str | Path, *, labelled: bool) -> list[RelationInstance]:
    """Instances of an errwise JSONL file (`-`: standard input). Without `labelled`, `relation` is optional
    (prediction input); with it, required. Every problem is one ErrwiseError naming the file, line and fix."""
    if str(path) == "-":
        name, stem, data = "<stdin>", "stdin", sys.stdin.buffer.read()
        try:
            text = data.decode("utf-8").removeprefix("\ufeff")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            _fail(name, f"line {line}, byte {e.start}", "not UTF-8 text; pass text saved as UTF-8")
    else:
        name, stem, text = str(path), Path(path).stem, read_text(path)  # checks UTF-8, as the loaders do
    pairs = []
    for n, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        rec = json_line(name, f"line {n}", line)
        pairs.append((f"line {n}", rec, f"{stem}:{n}"))
    return parse_records(pairs, name, labelled=labelled)


def parse_records(records: Iterable[tuple[str, Any, str]], source: str, *, labelled: bool) -> list[RelationInstance]:
    """(where, record, default uid) triples -> instances; `source` names the file in error messages."""
    keys = ("head", "tail", "relation") if labelled else ("head", "tail")
    out: list[RelationInstance] = []
    uids: set[str] = set()
    for where, rec, default_uid in records:
        rec = _record(source, where, rec, keys)
        unknown = [k for k in rec if k not in FIELDS]
        if unknown:
            _fail(source, where, f"unknown field(s) {', '.join(unknown)}; a record has only {', '.join(FIELDS)}")
        tokens, head, tail = record_spans(source, where, rec)
        relation = _label(source, where, "relation", rec["relation"]) if "relation" in rec else ""
        uid = _label(source, where, "id", rec["id"]) if "id" in rec else default_uid
        if uid in uids:
            _fail(source, where, f"duplicate id {uid!r}; give every record a unique id")
        uids.add(uid)
        out.append(RelationInstance(uid, tuple(tokens), head, tail, relation))
    if not out:
        _fail(source, "whole file", "no records; write one JSON object per line")
    return out


def as_instances(records: Sequence[RelationInstance | dict], *, labelled: bool) -> list[RelationInstance]:
    """API input: instances as they are, or dicts in errwise's JSONL format (named `records` in errors)."""
    if all(isinstance(r, RelationInstance) for r in records) and records:
        return list(records)
    return parse_records(
        ((f"record {i}", r, f"record:{i}") for i, r in enumerate(records)), "records", labelled=labelled
    )


def instance_row(x: RelationInstance) -> dict:
    """An instance as an errwise JSONL line (tokens and spans: exact, whatever the tokenisation of a text)."""
    return {"id": x.uid, "tokens": list(x.tokens), "head": list(x.head), "tail": list(x.tail), "relation": x.relation}


# ------------------------------------------------------------------------------------------------- scoring


def answers(scores: torch.Tensor, candidates: Sequence[Relation], top_k: int, min_score: float | None) -> list[dict]:
    """The output lines: best relation, its probability (softmax over the candidates), the top k."""
    probs = torch.softmax(scores.double(), dim=1)  # (N, C)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices  # ties: the lower index first
    out = []
    for p, idx in zip(probs.tolist(), order[:, : max(1, top_k)].tolist()):
        best = candidates[idx[0]]
        keep = min_score is None or p[idx[0]] >= min_score
        out.append(
            {
                "relation": best.id if keep else None,
                "name": best.name if keep else None,
                "score": round(p[idx[0]], 6),
                "top": [[candidates[i].id, round(p[i], 6)] for i in idx],
            }
        )
    return out


def accuracy(gold: Sequence[RelationInstance], preds: Sequence[str]) -> float | None:
    return sum(x.relation == p for x, p in zip(gold, preds)) / len(gold) if gold else None


# ----------------------------------------------------------------------------------------------- extractor


@dataclasses.dataclass
class Extractor:
    """A trained model with the relations it has learned, its replay memory and its held-out test instances.

    Example::

        ext = Extractor.load("runs/demo")  # a run folder, an extractor folder or an export folder
        ext.predict([{"text": "Ada Byron married William King in 1835.", "head": "Ada Byron", "tail": "William King"}])
        # [{"relation": "spouse", "name": "spouse", "score": 0.93, "top": [["spouse", 0.93], ...]}]
        new = ext.learn(records)  # dicts with "relation"; returns a new Extractor, `ext` is unchanged
        new.save("extractors/v2")
    """

    cfg: RunConfig
    relations: tuple[Relation, ...]
    """Every learned relation, in the order they were learned (the candidates of every prediction)."""
    tasks: list[list[str]]
    """Relation ids learned at each step (the run's tasks, then one per learn)."""
    memory: dict[str, list[RelationInstance]] | None
    """The replay memory per relation (None: an export folder, which can predict only)."""
    test: list[RelationInstance] | None
    """Held-out test instances of the learned relations (the run's test data, then each learn's held-out part)."""
    history: list[dict]
    """One line per learn step."""
    model: Any
    tok: Any
    origin: str = ""
    """Where the lineage started: the run folder and task, or the first extractor."""
    loaded_from: str = ""
    run_dir: Path | None = None
    """A run folder source: its memory and test data are read from the run's dataset when learning needs them."""
    records_dir: Path | None = None
    """What the method recorded during the last learn (errwise: error_cases/); copied into the saved folder."""
    _bonus: torch.Tensor | None = dataclasses.field(default=None, repr=False, compare=False)
    """`eval.calibrate content_free`: the calibration bonus of this model over `relations`, computed once."""
    _inference: Any = dataclasses.field(default=None, repr=False, compare=False)
    """The model predictions run through, made once: on CPU a copy with the LoRA adapters merged (what each
    evaluation makes for itself: on SmolLM2-135M seconds a call, so a server's every request would pay it)."""
    _inference_lock: Any = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    def inference_model(self):
        """The model `predict` scores with: `model` itself, or once on CPU its merged copy (the same scores as
        evaluation's, which merges the same way; twice the weights' memory while this Extractor lives)."""
        with self._inference_lock:
            if self._inference is None:
                from errwise.evaluate import merged_copy, merges_for_inference

                self._inference = merged_copy(self.model) if merges_for_inference(self.model) else self.model
            return self._inference

    # ---- loading

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None, dtype: str | None = None) -> Extractor:
        """A run folder (its last completed task), an extractor folder or an export folder. `device`, `dtype`:
        where and in what precision the model runs (and a later `learn` trains) [the source's model settings]."""
        path = Path(path)
        kind = check_source(path)
        loader = {"extractor": cls._load_extractor, "export": cls._load_export, "run": cls._load_run}[kind]
        ext = loader(path, _Runtime(device, dtype))
        ext.loaded_from = str(path.resolve())
        return ext

    @classmethod
    def _load_run(cls, path: Path, runtime: _Runtime) -> Extractor:
        from errwise.run import completed_tasks

        done = completed_tasks(path)
        if not done:
            raise ErrwiseError(f"{path}: the run has no completed task yet; let `errwise run {path}` finish one first")
        cfg = load_saved_config(path / "config.yaml")
        names = read_relations(path / "relations.json")
        tasks = [list(row["relations"]) for row in done]
        k = len(done) - 1
        model, tok = _load_model(runtime.apply(cfg), path / "checkpoints" / f"task_{k:02d}")
        relations = tuple(names[r] for t in tasks for r in t)
        origin = f"{path.resolve()} T{k + 1}"
        return cls(cfg, relations, tasks, None, None, [], model, tok, origin, run_dir=path)

    @classmethod
    def _load_extractor(cls, path: Path, runtime: _Runtime) -> Extractor:
        meta = json.loads((path / EXTRACTOR_FILE).read_text())
        cfg = load_saved_config(path / "config.yaml")
        relations = tuple(Relation(r["id"], r["name"], r.get("description", "")) for r in meta["relations"])
        memory: dict[str, list[RelationInstance]] = {}
        for x in read_records(path / "memory.jsonl", labelled=True) if meta.get("memory_size") else []:
            memory.setdefault(x.relation, []).append(x)
        test = read_records(path / "test.jsonl", labelled=True) if meta.get("test_size") else []
        history_file = path / "history.jsonl"
        history = [json.loads(line) for line in history_file.read_text().splitlines() if line.strip()]
        model, tok = _load_model(runtime.apply(cfg), path / "adapter")
        return cls(
            cfg, relations, meta["tasks"], memory, test, history, model, tok, meta.get("origin", str(path.resolve()))
        )

    @classmethod
    def _load_export(cls, path: Path, runtime: _Runtime) -> Extractor:
        meta = json.loads((path / EXPORT_FILE).read_text())
        cfg = from_dict(meta["config"], source=str(path / EXPORT_FILE))
        relations = tuple(Relation(r["id"], r["name"], r.get("description", "")) for r in meta["relations"])
        if meta["merged"]:  # full weights in the folder itself
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name=str(path), lora=False))
            model, tok = _load_model(runtime.apply(cfg), None)
        else:
            model, tok = _load_model(runtime.apply(cfg), path)
        return cls(cfg, relations, meta["tasks"], None, None, [], model, tok, meta.get("origin", str(path.resolve())))

    # ---- predicting

    def predict(
        self,
        records: Sequence[RelationInstance | dict],
        *,
        top_k: int = 3,
        min_score: float | None = None,
        batch_size: int | None = None,
    ) -> list[dict]:
        """One answer per record, in order: `{"relation", "name", "score", "top": [[id, probability], ...]}`;
        `relation` and `name` are None when the best probability is below `min_score`."""
        if batch_size is not None and batch_size < 1:
            raise ErrwiseError(f"batch_size must be >= 1, got {batch_size}")
        xs = as_instances(records, labelled=False)
        e = self.cfg.eval
        if e.calibrate == "content_free" and self._bonus is None:  # as evaluation scores (run.predict_with)
            from errwise.evaluate import content_free_bonus

            self._bonus = content_free_bonus(
                self.inference_model(), self.tok, self.relations, max_length=self.cfg.train.max_length,
                list_candidates=e.list_candidates,
            )  # fmt: skip
        scores = score_all(
            self.inference_model(),
            self.tok,
            xs,
            self.relations,
            batch_size=batch_size or e.batch_size,
            score=e.score,
            list_candidates=e.list_candidates,
            max_length=self.cfg.train.max_length,
            bonus=self._bonus if e.calibrate == "content_free" else None,
        )
        return answers(scores, self.relations, top_k, min_score)

    # ---- learning

    def learn(
        self,
        records: Sequence[RelationInstance | dict],
        *,
        relations: dict[str, Relation] | None = None,
        method: str | None = None,
        test_fraction: float = 0.2,
        overrides: dict[str, Any] | None = None,
        source: str = "records",
        predicted: Sequence[str | None] | None = None,
        on_step: Callable[[float], None] | None = None,
    ) -> Extractor:
        """One more task: `records` (with `relation`) bring new relations and/or more instances of learned ones.
        Per relation, `test_fraction` of them (seeded) is held out for testing. Returns a new Extractor (this one
        is unchanged); its last history line has the accuracies before and after.

        `predicted`: one per record, what the model answered on it when it was served (a learned relation id; None:
        not known). A method that mines its initial responses (errwise) takes it instead of asking the model again,
        so a record corrected by a user is an error case confused with that relation. `on_step` gets each training
        step's loss."""
        if not 0 <= test_fraction < 1:
            raise ErrwiseError(f"--test-fraction must be in [0, 1), got {test_fraction}")
        data = as_instances(records, labelled=True)
        predicted = list(predicted or [None] * len(data))
        if len(predicted) != len(data):
            raise ErrwiseError(f"predicted: {len(predicted)} answers for {len(data)} records; give one per record")
        learned = {r.id for r in self.relations}
        for i, p in enumerate(predicted):
            if p is not None and p not in learned:
                raise ErrwiseError(f"predicted: record {i}: {p!r} is no learned relation; give the model's answer")
        cfg = self._learn_config(method, overrides or {})
        if cfg.method.name == "lessons":
            raise ErrwiseError(
                "method lessons keeps its lesson bank in the run folder and cannot learn here yet; use --method "
                "errwise, replay, finetune, joint or instructor"
            )
        memory, test = self._memory_and_test()
        known = {r.id: r for r in self.relations}
        new = new_relations(self.relations, data, relations or {}, source)
        build_method(cfg)  # an unknown method fails before any work
        k = len(self.tasks)
        # uids unique across steps (a file of the same name may come again): `learn<step>/<id or file:line>`
        data = [dataclasses.replace(x, uid=f"learn{k}/{x.uid}") for x in data]
        answered = {x.uid: p for x, p in zip(data, predicted) if p is not None}
        held, train_data = held_out_split(data, test_fraction, cfg.train.seed)
        seen = (*self.relations, *new)
        old_tasks = [  # what the extractor keeps of earlier tasks: their memory (joint trains on it) and test data
            Task(
                i,
                tuple(t),
                tuple(x for r in t for x in memory.get(r, [])),
                (),
                tuple(x for x in test if x.relation in t),
            )
            for i, t in enumerate(self.tasks)
        ]
        task = Task(k, tuple(r.id for r in new), tuple(train_data), (), tuple(held))
        stream = TaskStream("extractor", 0, seen, (*old_tasks, task))
        t0 = time.time()
        served = self.inference_model()
        before = self._predict_ids(self.cfg, served, test, self.relations, None, "old relations, before")
        model = copy.deepcopy(self.model)  # this Extractor stays as it was
        records_dir = Path(tempfile.mkdtemp(prefix="errwise-learn-"))  # what the method records; save() copies it
        try:
            line = learn_task(cfg, stream, task, memory, model, self.tok, records_dir, answered, on_step)
        except BaseException:
            shutil.rmtree(records_dir, ignore_errors=True)
            raise
        new_memory = line.pop("memory")
        method_hints = line.pop("hints")
        after_old = self._predict_ids(cfg, model, test, seen, method_hints, "old relations, after")
        held_new = [x for x in held if x.relation not in known]
        after_new = self._predict_ids(cfg, model, held_new, seen, method_hints, "new relations")
        acc_before, acc_old, acc_new = accuracy(test, before), accuracy(test, after_old), accuracy(held_new, after_new)
        line = {
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "source": self.loaded_from or "(in memory)",
            "data": source,
            "method": cfg.method.name,
            "new_relations": [r.id for r in new],
            "more_of": sorted({x.relation for x in data if x.relation in known}),
            "train_instances": len(train_data),
            "held_out": len(held),
            "old_test": len(test),
            "old_accuracy_before": acc_before,
            "old_accuracy": acc_old,
            "forgetting": None if acc_before is None else acc_before - acc_old,
            "new_accuracy": acc_new,
            "new_test": len(held_new),
            **line,
            "seconds": time.time() - t0,
        }
        out = Extractor(
            cfg,
            seen,
            [*self.tasks, [r.id for r in new]],
            new_memory,
            [*test, *held],
            [*self.history, line],
            model,
            self.tok,
            self.origin,
            records_dir=records_dir,
        )
        weakref.finalize(out, shutil.rmtree, records_dir, True)
        return out

    def _learn_config(self, method: str | None, overrides: dict[str, Any]) -> RunConfig:
        d = to_dict(self.cfg)
        d["output_dir"] = None
        if method:
            set_dotted(d, "method.name", method)
        for key, value in overrides.items():
            set_dotted(d, key, value)
        return from_dict(d, source="learn options")

    def _memory_and_test(self) -> tuple[dict[str, list[RelationInstance]], list[RelationInstance]]:
        if self.memory is not None:
            return self.memory, list(self.test or [])
        run_dir = self.run_dir
        if run_dir is None:
            raise ErrwiseError(
                f"{self.origin}: an export folder holds no replay memory nor test data and cannot learn; learn from "
                "the run or extractor folder it was exported from"
            )
        from errwise.run import eval_instances, make_stream

        stream = make_stream(self.cfg)  # the run's dataset: its memory is stored as uids
        by_uid = {x.uid: x for t in stream.tasks for x in (*t.train, *t.val, *t.test)}
        k = len(self.tasks) - 1
        saved = json.loads((run_dir / "memory" / f"task_{k:02d}.json").read_text())
        self.memory = {rel: [by_uid[u] for u in uids] for rel, uids in saved.items()}
        self.test = eval_instances(stream, k, "test")
        return self.memory, list(self.test)

    def _predict_ids(self, cfg, model, xs, candidates, hints, desc) -> list[str]:
        from errwise.run import predict_with

        if not xs:
            return []
        return predict_with(cfg, model, self.tok, xs, tuple(candidates), hints=hints(xs) if hints else None, desc=desc)

    # ---- saving

    def save(self, path: str | Path) -> Path:
        """Write an extractor folder atomically (a temporary folder beside `path`, renamed at the end):
        extractor.json (relations, tasks, base model), config.yaml, adapter/ (LoRA adapter; full weights without
        LoRA), memory.jsonl (the replay memory's instances), test.jsonl (held-out test instances of the learned
        relations), history.jsonl (one line per learn step) and records/ (what the last learn's method recorded)."""
        path = Path(path)
        if path.exists():
            raise ErrwiseError(f"{path} exists; pass a new folder (an extractor folder is never overwritten)")
        memory, test = self._memory_and_test()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
        try:
            save_pretrained(self.model, tmp / "adapter")
            save_yaml(self.cfg, tmp / "config.yaml")
            rows = [instance_row(x) for xs in memory.values() for x in xs]
            _write_lines(tmp / "memory.jsonl", rows)
            _write_lines(tmp / "test.jsonl", [instance_row(x) for x in test])
            _write_lines(tmp / "history.jsonl", self.history)
            meta = {
                "format": "errwise-extractor",
                "version": 1,
                "base_model": self.cfg.model.name,
                "origin": self.origin,
                "relations": [dataclasses.asdict(r) for r in self.relations],
                "tasks": self.tasks,
                "memory_size": len(rows),
                "test_size": len(test),
            }
            (tmp / EXTRACTOR_FILE).write_text(json.dumps(meta, indent=1))
            if self.records_dir is not None and any(self.records_dir.iterdir()):
                shutil.copytree(self.records_dir, tmp / "records")
            _publish(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    def export(self, path: str | Path, *, merge: bool = False) -> Path:
        """A standard Hugging Face folder: the LoRA adapter (or, with `merge`, the LoRA merged into full weights),
        the tokenizer, and errwise.json (relations, prompt template, scoring), written atomically."""
        path = Path(path)
        if path.exists():
            raise ErrwiseError(f"{path} exists; pass a new folder")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
        lora = hasattr(self.model, "peft_config")
        try:
            if merge and lora:
                copy.deepcopy(self.model).merge_and_unload().save_pretrained(tmp)
            else:
                save_pretrained(self.model, tmp)
            self.tok.save_pretrained(tmp)
            e = self.cfg.eval
            template = PROMPT_TEMPLATE + ("Options: {options}\n" if e.list_candidates else "") + "Relation:"
            meta = {
                "format": "errwise-export",
                "version": 1,
                "origin": self.origin,
                "merged": merge or not lora,
                "relations": [dataclasses.asdict(r) for r in self.relations],
                "tasks": self.tasks,
                "prompt": template,
                "prompt_notes": "{sentence}: the tokens joined by spaces; {head}, {tail}: the mentions; {options}: the "
                "relation names joined by '; '. Tokenise with the tokenizer's special tokens and keep the last "
                "max_length tokens.",
                "answer": "' ' + relation name, then the end-of-sequence token",
                "score": e.score,
                "score_notes": "a relation's score is the summed log-probability of its answer tokens after the prompt "
                "(score mean: divided by their number); the prediction is the best score among the learned relations.",
                "max_length": self.cfg.train.max_length,
                "config": to_dict(dataclasses.replace(self.cfg, output_dir=None)),
            }
            (tmp / EXPORT_FILE).write_text(json.dumps(meta, indent=1))
            _publish(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path


def check_source(path: Path) -> str:
    """`run`, `extractor` or `export`, from the folder's marker files; else a one-line error."""
    if (path / EXTRACTOR_FILE).is_file():
        return "extractor"
    if (path / EXPORT_FILE).is_file():
        return "export"
    if (path / "config.yaml").is_file() and (path / "metrics.jsonl").is_file():
        return "run"
    raise ErrwiseError(
        f"{path}: neither a run folder (config.yaml, metrics.jsonl) nor an extractor or export folder "
        f"({EXTRACTOR_FILE} or {EXPORT_FILE}); pass a folder written by `errwise run`, `learn` or `export`"
    )


def write_text(path: Path, text: str) -> None:
    """Write a file atomically (rundir.atomic_write: a temporary file, synced, renamed)."""
    from errwise.rundir import atomic_write

    atomic_write(path, text.encode("utf-8"))


def _publish(tmp: Path, path: Path) -> None:
    """The finished temporary folder, synced, becomes `path` in one rename (mkdtemp made it private: open it as
    usual)."""
    from errwise.rundir import fsync_dir, sync_tree

    for folder in sorted({p.parent for p in tmp.rglob("*") if p.is_file()}, key=lambda p: -len(p.parts)):
        sync_tree(folder)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    os.rename(tmp, path)
    fsync_dir(path.parent)  # the rename itself is durable


def source_relations(path: Path) -> tuple[Relation, ...]:
    """The relations a source folder has learned, read without loading its model."""
    kind = check_source(path)
    if kind == "run":
        from errwise.run import completed_tasks

        names = read_relations(path / "relations.json")
        return tuple(names[r] for row in completed_tasks(path) for r in row["relations"])
    meta = json.loads((path / (EXTRACTOR_FILE if kind == "extractor" else EXPORT_FILE)).read_text())
    return tuple(Relation(r["id"], r["name"], r.get("description", "")) for r in meta["relations"])


def new_relations(
    learned: Sequence[Relation], data: Sequence[RelationInstance], names: dict[str, Relation], source: str
) -> list[Relation]:
    """The relations of `data` not learned yet (first appearance order), checked: >= 2 instances each, and no
    name of a learned relation under another id. `names`: names and descriptions (default: the id, _ as space)."""
    by_name = {r.name: r.id for r in learned}
    known = {r.id for r in learned}
    new = []
    for rel in dict.fromkeys(x.relation for x in data):
        if rel in known:
            continue
        r = names.get(rel) or Relation(rel, rel.replace("_", " "))
        count = sum(x.relation == rel for x in data)
        where = f"relation {rel} (first at {_where(data, rel)})"
        if r.name in by_name:
            raise ErrwiseError(
                f"{source}: {where}: its name {r.name!r} is the learned relation {by_name[r.name]}'s; write "
                f"relation {by_name[r.name]!r} to add instances of it, or give the new relation another name"
            )
        if count < 2:
            raise ErrwiseError(
                f"{source}: {where}: a new relation needs at least 2 instances (one to train on, one to hold "
                f"out), got {count}; add more sentences of it"
            )
        by_name[r.name] = rel
        new.append(r)
    return new


def _where(data: list[RelationInstance], rel: str) -> str:
    uid = next(x.uid for x in data if x.relation == rel)
    stem, _, n = uid.rpartition(":")
    return f"line {n}" if stem and n.isdigit() else f"id {uid}"


def _write_lines(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


@dataclasses.dataclass(frozen=True)
class _Runtime:
    """Where and in what precision a loaded source runs, over its saved model settings (None: keep them). Only the
    loading sees them: the Extractor's config stays the source's, so what it saves or exports later does not carry
    this machine's device (a learn's own --model.device/--model.dtype go into its new config as its options do)."""

    device: str | None = None
    dtype: str | None = None

    def apply(self, cfg: RunConfig) -> RunConfig:
        changes = {k: v for k, v in (("device", self.device), ("dtype", self.dtype)) if v is not None}
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **changes)) if changes else cfg


def _load_model(cfg: RunConfig, adapter: Path | None):
    from errwise.run import load_run_model

    return load_run_model(cfg, pick_device(cfg.model.device), adapter), load_tokenizer(cfg.model.name)


def held_out_split(
    data: Sequence[RelationInstance], fraction: float, seed: int
) -> tuple[list[RelationInstance], list[RelationInstance]]:
    """(held out, train): per relation, round(fraction * n) of its n instances (at least 1 and at most n - 1 when
    fraction > 0), drawn with a seed of its own; file order kept within each part."""
    held: set[str] = set()
    for rel in dict.fromkeys(x.relation for x in data):
        uids = [x.uid for x in data if x.relation == rel]
        k = 0 if fraction == 0 or len(uids) < 2 else min(len(uids) - 1, max(1, round(fraction * len(uids))))
        held |= set(random.Random(f"{seed}:{rel}").sample(uids, k))
    return [x for x in data if x.uid in held], [x for x in data if x.uid not in held]


def learn_task(
    cfg: RunConfig,
    stream: TaskStream,
    task: Task,
    memory: dict[str, list[RelationInstance]],
    model,
    tok,
    records_dir: Path,
    answered: dict[str, str] | None = None,
    on_step: Callable[[float], None] | None = None,
) -> dict:
    """One task of the continual loop on `model` (trained in place), with run()'s phases: the method's begin_task,
    training (its examples, the run's step budget), the memory update, the consolidation round and end_task.
    `answered` (uid -> relation id): known answers of the model, which begin_task sees instead of predicting those
    instances. Returns the training figures, the updated memory ("memory") and the method's hints ("hints")."""
    from errwise.run import (
        consolidation_phase,
        first_round_context,
        memory_phase,
        seed_everything,
        task_context,
        train_phase,
        update_memory,
    )

    method = build_method(cfg)
    seed_everything(cfg.train.seed + 1000 * task.index)
    ctx = task_context(cfg, stream, task, memory, model, tok, method, records_dir)
    first = first_round_context(cfg, ctx)
    method.begin_task(with_answers(first, answered) if answered else first)
    stats, consolidate_steps = train_phase(cfg, ctx, method, on_step, first=first)
    memory = memory_phase(cfg, ctx, method, memory)  # the new relations' memory
    more = sorted({x.relation for x in task.train} - set(task.relations))
    if more and cfg.method.memory_per_relation > 0:
        # Learned relations that got more instances: their memory is chosen again among the kept and the new ones.
        pool = [*task.train, *(x for r in more for x in memory.get(r, []))]
        memory = {**memory, **update_memory(cfg, model, tok, pool, more, task.index)}
    consolidation = None
    if consolidate_steps:
        consolidation = consolidation_phase(
            cfg, dataclasses.replace(ctx, memory=memory), method, consolidate_steps, on_step
        )
    method.end_task(dataclasses.replace(ctx, memory=memory))
    return {
        "train_steps": stats.steps + (consolidation.steps if consolidation else 0),
        "train_examples": stats.examples,
        "train_kinds": stats.kinds,
        "train_loss": stats.loss,
        "consolidation_steps": consolidation.steps if consolidation else 0,
        "memory": memory,
        "hints": method.hints,
    }


def with_answers(ctx, answered: dict[str, str]):
    """`ctx` whose `predict` gives the known answer of an instance in `answered` (uid -> relation id) and asks the
    model about the others: the initial responses of a method, with a user's corrections standing in for the
    model's answers on the instances they corrected."""

    def predict(instances, desc="predict"):
        ask = [x for x in instances if x.uid not in answered]
        got = iter(ctx.predict(ask, desc=desc) if ask else [])
        return [answered[x.uid] if x.uid in answered else next(got) for x in instances]

    return dataclasses.replace(ctx, predict=predict)
