"""What `errwise serve` does, without HTTP: predict with the served version, keep corrections, learn from them in a
background thread beside serving, switch to the new version atomically, roll back.

Corrections are error cases: each records what the served model answered (`predicted`), and learning passes it to
`Extractor.learn(predicted=...)`, so errwise's initial responses take it as the model's answer on that instance (a
wrong one: confront and contrastive examples against the relation it was confused with). A relation the model has
not learned becomes a new relation, as in `errwise learn`; it needs 2 corrections (one to train on, one to hold
out), and waits in the queue until it has them.
"""

from __future__ import annotations

import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import errwise
from errwise.data.formats import _label
from errwise.errors import ErrwiseError
from errwise.extractor import Extractor, check_source, parse_records
from errwise.serve.store import SOURCE_VERSION, Store, now


class ServeError(ErrwiseError):
    """A refused request, with its HTTP status (an ErrwiseError without one is a 400)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Service:
    """The served extractor and its serving folder. `serving` is one (version, Extractor) pair, replaced whole:
    a request reads it once and answers from that version, whatever switches meanwhile."""

    def __init__(
        self,
        store: Store,
        *,
        device: str | None = None,
        method: str = "errwise",
        test_fraction: float = 0.2,
        overrides: dict[str, Any] | None = None,
        max_records: int = 64,
    ):
        self.store = store
        self.device = device
        self.method = method
        self.test_fraction = test_fraction
        self.overrides = overrides or {}
        self.max_records = max_records
        name = store.current()
        self.serving: tuple[str, Extractor] = (name, Extractor.load(store.model_path(name), device=device))
        self.job: dict | None = None  # the last job started by this process (its progress lives here)
        self._switch = threading.Lock()  # starting a job, switching and rolling back, one at a time

    # ---- reading

    def health(self) -> dict:
        (version, ext), job = self.serving, self.job
        return {
            "status": "ok",
            "version": version,
            "errwise": errwise.__version__,
            "source": str(self.store.source),
            "relations": len(ext.relations),
            "pending_corrections": len(self.store.pending(version)),
            "learning": job["id"] if job and job["state"] in ("queued", "running") else None,
        }

    def relations(self) -> dict:
        version, ext = self.serving
        return {"version": version, "relations": [{"id": r.id, "name": r.name, "description": r.description}
                                                  for r in ext.relations]}  # fmt: skip

    def predict(self, records: list[dict], top_k: int, min_score: float | None) -> dict:
        if len(records) > self.max_records:
            raise ServeError(413, f"{len(records)} records; send at most {self.max_records} per request")
        version, ext = self.serving
        return {"version": version, "predictions": ext.predict(records, top_k=top_k, min_score=min_score)}

    def corrections(self) -> dict:
        version, _ = self.serving
        return {"version": version, "pending": self.store.pending(version)}

    def get_job(self, job_id: str) -> dict:
        job = self.job if self.job and self.job["id"] == job_id else self.store.read_job(job_id)
        if job is None:
            raise ServeError(404, f"no job {job_id!r}; POST /learn starts one")
        return job

    # ---- writing

    def correct(self, body: dict) -> dict:
        """One correction: a record in errwise's JSONL form whose `relation` is the right answer, and `predicted`,
        what the model answered (a relation of the served version). Appended to the log, durably."""
        version, ext = self.serving
        if ext.memory is None and ext.run_dir is None:  # as learn refuses: a correction here could never be learned
            raise ServeError(409, "an export folder only predicts; serve the run or extractor folder it came from")
        record = {k: v for k, v in body.items() if k != "predicted"}
        where = "POST /corrections"
        (x,) = parse_records([("the record", record, "correction")], where, labelled=True)
        predicted = _label(where, "the record", "predicted", body.get("predicted"))
        ids = {r.id for r in ext.relations}
        if predicted not in ids:
            raise ErrwiseError(
                f"{where}: predicted {predicted!r} is no relation of version {version}; send the id /predict answered"
            )
        if x.relation not in ids:
            self._check_new_name(x.relation, version, ext)
        row = self.store.append_correction({"version": version, "predicted": predicted, "record": record})
        return {"id": row["id"], "pending": len(self.store.pending(version))}

    def _check_new_name(self, rel: str, version: str, ext: Extractor) -> None:
        """A new relation is named after its id (`_` as a space): a name taken by another id would be refused
        when learning, so it is refused now."""
        taken = {r.name: r.id for r in ext.relations}
        for c in self.store.pending(version):
            taken[c["record"]["relation"].replace("_", " ")] = c["record"]["relation"]
        other = taken.get(rel.replace("_", " "), rel)
        if other != rel:
            raise ErrwiseError(
                f"POST /corrections: relation {rel!r} would be named {rel.replace('_', ' ')!r}, which is relation "
                f"{other!r}'s; send {other!r}"
            )

    def learn(self) -> dict:
        """Start a learn job on the pending corrections (202): a background thread; serving goes on meanwhile."""
        with self._switch:
            version, ext = self.serving
            if self.job and self.job["state"] in ("queued", "running"):
                raise ServeError(409, f"job {self.job['id']} is learning already; watch GET /jobs/{self.job['id']}")
            if ext.memory is None and ext.run_dir is None:
                raise ServeError(409, "an export folder only predicts; serve the run or extractor folder it came from")
            pending = self.store.pending(version)
            if not pending:
                raise ServeError(409, "no corrections to learn from; POST some to /corrections first")
            known = {r.id for r in ext.relations}
            count: dict[str, int] = {}
            for c in pending:
                count[c["record"]["relation"]] = count.get(c["record"]["relation"], 0) + 1
            waiting = sorted(r for r, n in count.items() if r not in known and n < 2)
            chosen = [c for c in pending if c["record"]["relation"] not in waiting]
            if not chosen:
                raise ServeError(
                    409, f"nothing to learn yet: new relation(s) {', '.join(waiting)} need 2 corrections each"
                )
            steps = self.overrides.get("train.max_steps") or ext.cfg.train.max_steps
            job = {**self.store.new_job(version), "corrections": [c["id"] for c in chosen], "waiting": waiting,
                   "progress": {"phase": "queued", "step": 0, "steps": steps, "loss": None}}  # fmt: skip
            self.store.write_job(job)
            self.job = job
            threading.Thread(target=self._run, args=(job, version, ext, chosen), daemon=True).start()
        return job

    def _update(self, **changes) -> dict:
        """The job in progress, replaced by a new dict (a request may be reading the old one meanwhile)."""
        self.job = {**self.job, **changes}
        return self.job

    def _run(self, job: dict, version: str, ext: Extractor, chosen: list[dict]) -> None:
        try:
            steps = job["progress"]["steps"]
            progress = {**job["progress"], "phase": "learning"}
            self.store.write_job(self._update(state="running", started=now(), progress=progress))

            def on_step(loss: float) -> None:
                step = self.job["progress"]["step"] + 1
                self._update(progress={"phase": "training", "step": step, "steps": steps, "loss": round(loss, 4)})

            known = {r.id for r in ext.relations}
            new = ext.learn(
                [{**c["record"], "id": c["id"]} for c in chosen],
                method=self.method,
                test_fraction=self.test_fraction,
                overrides=self.overrides,
                source=f"corrections {chosen[0]['id']}..{chosen[-1]['id']}",
                predicted=[c["predicted"] if c["predicted"] in known else None for c in chosen],
                on_step=on_step,
            )
            self.store.write_job(self._update(progress={**self.job["progress"], "phase": "saving"}))
            result = learn_result(new.history[-1])
            learned = [*self.store.meta(version)["corrections"], *job["corrections"]]
            meta = {"parent": version, "corrections": learned, "job": job["id"], "result": result}
            name = self.store.add_version(meta, new.save)
            with self._switch:
                self.store.set_current(name)
                self.serving = (name, new)
            done = {"state": "done", "finished": now(), "new_version": name, "result": result}
            self._update(progress={**self.job["progress"], "phase": "done"}, **done)
        except Exception as e:  # the job fails; the server goes on serving the version it served
            if not isinstance(e, ErrwiseError):
                traceback.print_exc(file=sys.stderr)
            self._update(state="failed", finished=now(), error=str(e) if isinstance(e, ErrwiseError) else repr(e))
        self.store.write_job(self.job)

    def rollback(self) -> dict:
        """Serve the version the current one was learned from again; its pending corrections come back."""
        with self._switch:
            version, _ = self.serving
            if self.job and self.job["state"] in ("queued", "running"):
                raise ServeError(409, f"job {self.job['id']} is learning; roll back when it has finished")
            parent = self.store.meta(version)["parent"]
            if parent is None:
                raise ServeError(409, f"version {SOURCE_VERSION} (SOURCE itself) is the first; nothing to roll back")
            ext = Extractor.load(self.store.model_path(parent), device=self.device)
            self.store.set_current(parent)
            self.serving = (parent, ext)
        return {"version": parent, "from": version}


def learn_result(h: dict) -> dict:
    """A learn step's figures, and the lines `errwise learn` prints for them."""
    from errwise.cli import learn_summary

    keys = ("new_relations", "more_of", "train_instances", "held_out", "train_steps", "new_accuracy", "new_test",
            "old_accuracy", "old_accuracy_before", "old_test", "forgetting", "seconds")  # fmt: skip
    return {**{k: h[k] for k in keys}, "summary": learn_summary(h)}


def open_service(source: str | Path, state: str | Path | None = None, **options) -> Service:
    """The service of SOURCE with its serving folder (default: `<SOURCE>.serve` beside it)."""
    source = Path(source)
    check_source(source)
    store = Store(state or source.resolve().with_name(source.resolve().name + ".serve"), source)
    return Service(store, **options)
