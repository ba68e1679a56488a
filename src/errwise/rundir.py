"""The run folder's integrity: what marks progress is written atomically, a crash is cleaned up on resume, and one
process at a time works in a folder.

`metrics.jsonl` is the only progress marker: its line for a task is written last, after the task's checkpoint,
memory and predictions are on disk (synced), by a temporary file renamed over it. A kill at any moment therefore
loses at most the task in progress; its half-written `.tmp` files and folders are removed on resume, and a torn
last line (a run folder from an older version, or a disk that failed mid-write) means that task is not done.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from errwise.data.types import TaskStream
from errwise.errors import ErrwiseError, os_error


def completed_tasks(run_dir: Path) -> list[dict]:
    """The metrics.jsonl lines, one per completed task. A torn last line (a crash or a full disk in the middle
    of its write) is a task not done; a damaged line before it is an error naming it."""
    return _read_metrics(run_dir)[0]


def _read_metrics(run_dir: Path) -> tuple[list[dict], bytes]:
    """(the completed tasks' lines, the file's intact prefix, with its final newline)."""
    path = run_dir / "metrics.jsonl"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], b""
    except OSError as e:
        raise os_error(e) from None
    rows: list[dict] = []
    kept = b""
    lines = data.split(b"\n")
    last = max((i for i, chunk in enumerate(lines) if chunk.strip()), default=-1)
    for i, chunk in enumerate(lines):
        if not chunk.strip():
            continue
        try:
            row = json.loads(chunk.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            row = None
        if not isinstance(row, dict) and i == last:  # torn by a crash mid-write: that task is not done
            break
        ok = isinstance(row, dict) and row.get("task") == len(rows) and isinstance(row.get("accuracy_row"), list)
        ok = ok and len(row["accuracy_row"]) == len(rows) + 1 and isinstance(row.get("seconds"), (int, float))
        if not ok:
            raise ErrwiseError(
                f"{path}: line {i + 1} is damaged (not the metrics of task {len(rows) + 1}); delete it and the lines "
                f"after it to train those tasks again"
            )
        rows.append(row)
        kept = b"\n".join(lines[: i + 1]) + b"\n"
    return rows, kept


def append_line(path: Path, row: dict) -> None:
    """Append one JSON line atomically: the whole file is rewritten to a temporary file, synced and renamed, so a
    kill or a full disk leaves either the old file or the new one, never a torn line."""
    old = path.read_bytes() if path.exists() else b""
    old = old[: old.rfind(b"\n") + 1]  # a torn last line (no newline) is dropped, never continued
    atomic_write(path, old + (json.dumps(row) + "\n").encode())


def atomic_write(path: Path, data: bytes) -> None:
    """`path` holds `data` or what it held before, whatever happens (temporary file, fsync, rename, fsync)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:  # name the file: a full disk's error has no path of its own
        raise OSError(e.errno, e.strerror, str(path)) from None
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(save, model, path: Path) -> None:
    """`save(model, path)` (model.save_checkpoint: a temporary folder renamed over `path`), synced; a full disk or a
    read-only folder is an OSError naming `path` (safetensors reports it as its own error type)."""
    try:
        save(model, path)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None
    except Exception as e:
        code = re.search(r"os error (\d+)", str(e))
        if type(e).__name__ != "SafetensorError" or not code:
            raise
        raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from None
    sync_tree(path)


def sync_tree(folder: Path) -> None:
    """A checkpoint on disk before the metrics line that marks its task done (save_pretrained does not sync)."""
    for p in folder.iterdir():
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(folder)
    fsync_dir(folder.parent)


_LOCKS: dict[Path, Any] = {}  # run folder -> its open, locked `.lock` file, held until `run` returns


def lock_run_dir(run_dir: Path) -> None:
    """One process per run folder: an `fcntl` lock on `run_dir/.lock`, released when `run` returns or raises
    (`holds_run_dir`) or the process ends (even by kill -9). A second process gets a one-line error and changes
    nothing."""
    import fcntl

    key = run_dir.resolve()
    if key in _LOCKS:  # this process holds it already
        return
    f = open(run_dir / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        pid = f.read().strip()
        f.close()
        raise ErrwiseError(
            f"{run_dir} is in use by another errwise process{f' (pid {pid})' if pid else ''}; wait for it to end, "
            "or pass another --output_dir"
        ) from None
    f.truncate(0)
    f.write(f"{os.getpid()}\n")
    f.flush()
    _LOCKS[key] = f


def holds_run_dir(fn):
    """Decorator of `run`: the run folder it locks is unlocked when it returns or raises (a notebook whose run
    failed must not keep the folder from a later process)."""

    @functools.wraps(fn)
    def wrapper(*args, **kw):
        held = set(_LOCKS)
        try:
            return fn(*args, **kw)
        finally:
            for key in set(_LOCKS) - held:
                _LOCKS.pop(key).close()

    return wrapper


def claim_run_dir(run_dir: Path, done: list[dict]) -> None:
    """Lock the run folder, check that no other process completed a task since it was read, then clean up after a
    crash: the torn bytes of metrics.jsonl are dropped and half-written `.tmp` files and folders removed."""
    lock_run_dir(run_dir)
    rows, kept = _read_metrics(run_dir)
    if len(rows) != len(done):
        raise ErrwiseError(f"{run_dir} changed while this run started (another process?); run the command again")
    path = run_dir / "metrics.jsonl"
    if path.exists() and path.read_bytes() != kept:
        atomic_write(path, kept)
    for folder in (run_dir, *(run_dir / sub for sub in ("checkpoints", "memory", "predictions"))):
        for leftover in folder.glob("*.tmp") if folder.is_dir() else ():
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()


def check_resumable(run_dir: Path, done: list[dict], stream: TaskStream, lora: bool) -> None:
    """Before anything is loaded or written: the last completed task's checkpoint and memory must be intact."""
    if not done:
        return
    uids = {x.uid for t in stream.tasks for x in (*t.train, *t.val, *t.test)}
    k = len(done) - 1
    if k >= len(stream.tasks):
        raise ErrwiseError(
            f"{run_dir / 'metrics.jsonl'} holds {len(done)} tasks but the stream has {len(stream.tasks)}; "
            "the data changed since the run started: pass the original data"
        )
    problem = _task_files_problem(run_dir, k, uids, lora)
    if problem is None:
        return
    intact = next((j for j in range(k - 1, -1, -1) if _task_files_problem(run_dir, j, uids, lora) is None), None)
    fix = (
        f"keep only the first {intact + 1} line(s) of metrics.jsonl to train again from T{intact + 2}"
        if intact is not None
        else "delete metrics.jsonl to train again from T1"
    )
    raise ErrwiseError(f"cannot resume {run_dir} after T{k + 1}: {problem}; restore it, or {fix}")


def _task_files_problem(run_dir: Path, k: int, uids: set[str], lora: bool) -> str | None:
    """What is wrong with task k's checkpoint or memory file, or None."""
    ckpt = run_dir / "checkpoints" / f"task_{k:02d}"
    config = ckpt / ("adapter_config.json" if lora else "config.json")
    if not ckpt.is_dir():
        return f"its checkpoint {ckpt} is missing"
    weights = sorted(ckpt.glob("*.safetensors"))
    if not weights or not config.is_file():
        return f"its checkpoint {ckpt} is incomplete (no {config.name} or *.safetensors)"
    for path in [config, *weights]:
        bad = _json_problem(path) if path.suffix == ".json" else _safetensors_problem(path)
        if bad:
            return f"its checkpoint file {path} is {bad}"
    memory = run_dir / "memory" / f"task_{k:02d}.json"
    if not memory.is_file():
        return f"its memory {memory} is missing"
    bad = _json_problem(memory)
    if bad:
        return f"its memory {memory} is {bad}"
    saved = json.loads(memory.read_text())
    ok = isinstance(saved, dict) and all(isinstance(v, list) for v in saved.values())
    ok = ok and all(isinstance(u, str) and u in uids for v in saved.values() for u in v)
    if not ok:
        return f"its memory {memory} names instances the data does not hold (damaged, or the data changed)"
    return None


def _json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return "damaged (not readable JSON)"
    return None


def _safetensors_problem(path: Path) -> str | None:
    """A truncated or garbled safetensors file, told from its header (8-byte length, JSON) and its size."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n)) if 0 < n <= size - 8 else None
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"] if header else None
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
        ends = None
    if ends is None or 8 + n + max(ends, default=0) != size:
        return "damaged (truncated or not safetensors)"
    return None
