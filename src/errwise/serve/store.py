"""The serving folder: the versions of the extractor, the corrections log and the learn jobs, written so that a
crash (kill -9) at any moment loses no acknowledged correction and leaves the last complete version to serve.

    <state>/
      source             SOURCE, served as version v0 (its absolute path; a folder serves one source only)
      current            the served version's name (v0: SOURCE itself), replaced atomically (os.replace)
      versions/vN/       a learned version: model/ (an extractor folder) and version.json (its parent, the ids of
                         every correction learned up to it, the job, the learn step's history line); written under a
                         temporary name and renamed when complete, so a version folder is always whole
      corrections.jsonl  one line per correction, appended, flushed and fsynced before it is acknowledged
      jobs/<id>.json     a learn job: state, progress, result (atomic writes)

No module here needs FastAPI.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from errwise.errors import ErrwiseError
from errwise.rundir import atomic_write, fsync_dir, sync_tree

SOURCE_VERSION = "v0"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Store:
    """One serving folder, locked by one process (an fcntl lock, released by the kernel even on kill -9)."""

    def __init__(self, root: str | Path, source: str | Path):
        self.root = Path(root)
        self.source = Path(source).resolve()
        self.versions = self.root / "versions"
        self.jobs = self.root / "jobs"
        self.log = self.root / "corrections.jsonl"
        self._lock = threading.Lock()  # appends and job numbers, between the server's threads
        self.root.mkdir(parents=True, exist_ok=True)
        self._flock = open(self.root / ".lock", "a")  # noqa: SIM115 (held until the process ends)
        try:
            fcntl.flock(self._flock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ErrwiseError(f"{self.root}: another errwise serve uses it; stop that one or pass --state") from None
        self.versions.mkdir(exist_ok=True)
        self.jobs.mkdir(exist_ok=True)
        marker = self.root / "source"
        if marker.exists() and Path(marker.read_text().strip()) != self.source:
            raise ErrwiseError(
                f"{self.root} serves {marker.read_text().strip()}, not {self.source}; pass another --state folder"
            )
        if not marker.exists():
            atomic_write(marker, f"{self.source}\n".encode())
        self._recover()
        self._count = len(self.corrections())

    def _recover(self) -> None:
        """After a crash: a version folder never renamed into place is removed; a torn last line of the log (it
        was never acknowledged) is cut; a job that was queued or running failed, or, when its version was written
        whole before the crash (and no rollback came since), is done and served."""
        for p in self.versions.iterdir():
            if p.name.startswith("."):
                shutil.rmtree(p, ignore_errors=True)
        if self.log.exists():
            data = self.log.read_bytes()
            if data and not data.endswith(b"\n"):
                with open(self.log, "r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)
                    os.fsync(f.fileno())
        if not (self.root / "current").exists():
            self.set_current(SOURCE_VERSION)
        written = {m["job"]: m for m in map(self.meta, self.names()) if m["version"] != SOURCE_VERSION}
        for p in self.jobs.glob("*.json"):
            job = json.loads(p.read_text())
            if job["state"] not in ("queued", "running"):
                continue
            meta = written.get(job["id"])
            if meta and self.current() in (meta["parent"], meta["version"]):  # whole on disk: switched (now)
                self.set_current(meta["version"])
                job |= {"state": "done", "new_version": meta["version"], "result": meta["result"]}
            else:
                job |= {"state": "failed", "error": "interrupted: the server stopped while learning; the corrections "
                        "are kept, POST /learn again"}  # fmt: skip
            self.write_job({**job, "finished": now()})

    # ---- versions

    def current(self) -> str:
        return (self.root / "current").read_text().strip()

    def set_current(self, name: str) -> None:
        atomic_write(self.root / "current", f"{name}\n".encode())

    def names(self) -> list[str]:
        """Every version, oldest first (v0 is SOURCE)."""
        numbers = sorted(int(p.name[1:]) for p in self.versions.iterdir() if p.name[1:].isdigit())
        return [SOURCE_VERSION, *(f"v{n}" for n in numbers)]

    def model_path(self, name: str) -> Path:
        """The folder Extractor.load reads for version `name`."""
        return self.source if name == SOURCE_VERSION else self.versions / name / "model"

    def meta(self, name: str) -> dict:
        if name == SOURCE_VERSION:
            return {"version": name, "parent": None, "corrections": []}
        return json.loads((self.versions / name / "version.json").read_text())

    def add_version(self, meta: dict, save: Callable[[Path], None]) -> str:
        """A new version: `save(folder)` writes the extractor folder (which must not exist), beside version.json,
        in a temporary folder renamed to versions/vN when whole. Returns vN; `current` is not changed."""
        name = f"v{int(self.names()[-1][1:]) + 1}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=self.versions))
        try:
            save(tmp / "model")
            (tmp / "version.json").write_text(json.dumps({**meta, "version": name, "time": now()}, indent=1))
            sync_tree(tmp)
            os.chmod(tmp, 0o755)
            os.rename(tmp, self.versions / name)
            fsync_dir(self.versions)  # the rename is durable before `current` can name it
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return name

    # ---- corrections

    def append_correction(self, row: dict) -> dict:
        """`row` with an id and a time, appended to the log and on disk (write, flush, fsync) when this returns."""
        with self._lock:
            row = {"id": f"c{self._count + 1}", "time": now(), **row}
            new = not self.log.exists()
            with open(self.log, "ab") as f:
                start = f.tell()
                try:
                    f.write((json.dumps(row, ensure_ascii=False) + "\n").encode())
                    f.flush()
                    os.fsync(f.fileno())
                except BaseException:  # a full disk: no torn line stays for the next correction to glue onto
                    f.truncate(start)
                    raise
            if new:
                fsync_dir(self.root)  # the new file's name is durable too
            self._count += 1
        return row

    def corrections(self) -> list[dict]:
        if not self.log.exists():
            return []
        lines = self.log.read_bytes().split(b"\n")
        rows = []
        for i, line in enumerate(lines[:-1], 1):  # after the last newline: a torn line, never acknowledged
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    msg = f"{self.log}, line {i}: not a JSON correction; mend or remove that line"
                    raise ErrwiseError(msg) from None
        return rows

    def pending(self, version: str) -> list[dict]:
        """The corrections version `version` has not learned, in the order they came."""
        learned = set(self.meta(version)["corrections"])
        return [c for c in self.corrections() if c["id"] not in learned]

    # ---- jobs

    def new_job(self, version: str) -> dict:
        with self._lock:
            n = max((int(p.stem) for p in self.jobs.glob("*.json") if p.stem.isdigit()), default=0) + 1
            job = {"id": str(n), "state": "queued", "version": version, "created": now(), "progress": {}}
            self.write_job(job)
        return job

    def write_job(self, job: dict) -> None:
        atomic_write(self.jobs / f"{job['id']}.json", json.dumps(job, indent=1).encode())

    def read_job(self, job_id: str) -> dict | None:
        path = self.jobs / f"{job_id}.json"
        return json.loads(path.read_text()) if job_id.isdigit() and path.is_file() else None
