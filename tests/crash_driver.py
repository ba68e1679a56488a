"""Run `errwise run` many times, killing it at chosen moments, for tests/test_kill.py (not a test module itself).

    python tests/crash_driver.py PLAN.json RESULT.json

PLAN: {"argv": [...the run's options...], "scenarios": {name: {"folder": path, "attempts": [hook or null]}}}.
Every attempt is `errwise run ARGV --output_dir FOLDER` in a child forked from this process (which imported torch
and errwise once, so an attempt costs no import); a hook makes the child kill itself (SIGKILL, or a SIGTERM) at a
moment, the last attempt (null) runs to the end. RESULT: per scenario, per attempt, how the child ended and how
many tasks metrics.jsonl held afterwards. Hooks patch functions in the child only; errwise has no test hook.

Hooks (all count calls within one attempt):
  {"call": "errwise.run.train", "n": 2}             SIGKILL at the n-th call of a module function, before it runs
  {"step": 7}                                         SIGKILL before the 7th optimiser step of the attempt
  {"replace": "memory/task_01.json", "at": "before"} os.replace onto a path ending so: SIGKILL before / "after" it,
                                                      or "torn": cut the temporary file in half first
  {"safetensors": 2}                                  the n-th safetensors file is written, cut in half, SIGKILL
  {"rmtree": "checkpoints/task_02"}                   SIGKILL right after that folder is deleted
  {"signal": "SIGTERM", "call": ..., "n": ...}        send a signal instead of SIGKILL
  {"pause": "errwise.run.train", "n": 2, "second": true}  wait at that call until a second process started on the
                                                      same folder has ended (it must be refused), then go on
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (imported once here: every fork starts with it)

from errwise import cli  # noqa: E402
from errwise import run as run_module  # noqa: E402, F401

TIMEOUT = 180.0


def die(sig: int = signal.SIGKILL) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(60)  # a SIGTERM is handled at the next bytecode; SIGKILL never returns


def install(hook: dict, folder: Path) -> None:
    import importlib
    import shutil

    sig = getattr(signal, hook.get("signal", "SIGKILL"))
    if "call" in hook or "pause" in hook:
        module_name, _, name = (hook.get("call") or hook["pause"]).rpartition(".")
        module = importlib.import_module(module_name)
        real, calls = getattr(module, name), [0]

        def wrapper(*args, **kw):
            calls[0] += 1
            if calls[0] == hook["n"]:
                if "pause" in hook:
                    (folder.parent / f"{folder.name}.paused").touch()
                    while not (folder.parent / f"{folder.name}.go").exists():
                        time.sleep(0.02)
                else:
                    die(sig)
            return real(*args, **kw)

        setattr(module, name, wrapper)
    if "step" in hook:
        real_step, steps = torch.optim.AdamW.step, [0]

        def step(self, *args, **kw):
            steps[0] += 1
            if steps[0] == hook["step"]:
                die(sig)
            return real_step(self, *args, **kw)

        torch.optim.AdamW.step = step
    if "replace" in hook:
        real_replace, seen = os.replace, [0]

        def replace(src, dst, *args, **kw):
            if str(dst).endswith(hook["replace"]):
                seen[0] += 1
                if seen[0] == hook.get("n", 1):
                    if hook["at"] == "torn":
                        os.truncate(src, os.path.getsize(src) // 2)
                    if hook["at"] in ("before", "torn"):
                        die(sig)
                    real_replace(src, dst, *args, **kw)
                    die(sig)
            return real_replace(src, dst, *args, **kw)

        os.replace = replace
    if "safetensors" in hook:
        import peft.peft_model

        real_save, saves = peft.peft_model.safe_save_file, [0]

        def save(tensors, filename, *args, **kw):
            real_save(tensors, filename, *args, **kw)
            saves[0] += 1
            if saves[0] == hook["safetensors"]:
                os.truncate(filename, os.path.getsize(filename) // 2)
                die(sig)

        peft.peft_model.safe_save_file = save
    if "rmtree" in hook:
        real_rmtree = shutil.rmtree

        def rmtree(path, *args, **kw):
            real_rmtree(path, *args, **kw)
            if str(path).endswith(hook["rmtree"]):
                die(sig)

        shutil.rmtree = rmtree


def attempt(argv: list[str], folder: Path, hook: dict | None, log: Path) -> int:
    """Fork a child running `errwise run`; returns its pid."""
    pid = os.fork()
    if pid:
        return pid
    try:  # the child
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 2)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        if hook:
            install(hook, folder)
        code = cli.main(["run", *argv, "--output_dir", str(folder)])
    except BaseException:
        traceback.print_exc()
        code = 99
    sys.stderr.flush()
    os._exit(code)


def wait(pid: int) -> dict:
    deadline = time.time() + TIMEOUT
    while time.time() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if os.WIFSIGNALED(status):
                return {"signal": signal.Signals(os.WTERMSIG(status)).name, "code": None}
            return {"signal": None, "code": os.WEXITSTATUS(status)}
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return {"signal": "timeout", "code": None}


def tasks_done(folder: Path) -> int:
    path = folder / "metrics.jsonl"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    results: dict[str, list[dict]] = {}
    for name, scenario in plan["scenarios"].items():
        folder = Path(scenario["folder"])
        results[name] = []
        for i, hook in enumerate(scenario["attempts"]):
            log = folder.parent / f"{folder.name}.{i}.log"
            t0 = time.time()
            pid = attempt(plan["argv"], folder, hook, log)
            second = None
            if hook and hook.get("second"):  # a second process on the same folder while the first waits
                flag = folder.parent / f"{folder.name}.paused"
                while not flag.exists() and time.time() - t0 < TIMEOUT:
                    time.sleep(0.02)
                before = tasks_done(folder)
                second_log = folder.parent / f"{folder.name}.second.log"
                second = wait(attempt(plan["argv"], folder, None, second_log))
                second |= {"stderr": second_log.read_text(), "tasks_done_before": before}
                second["tasks_done_after"] = tasks_done(folder)
                (folder.parent / f"{folder.name}.go").touch()
            end = wait(pid)
            end |= {"stderr": log.read_text(), "tasks_done": tasks_done(folder), "seconds": time.time() - t0}
            if second:
                end["second"] = second
            results[name].append(end)
    Path(sys.argv[2]).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
