"""benchmarks/queue.sh's guards, run as the shell script (no run starts in these tests)."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

QUEUE = Path(__file__).resolve().parents[1] / "benchmarks" / "queue.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run_queue(jobs: Path, out: Path, *kept: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """queue.sh on `jobs` with one worker, from the repository's root."""
    return subprocess.run(
        ["bash", str(QUEUE), str(jobs), str(out), "1", *kept],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=QUEUE.parents[1],
    )


def _queue(tmp_path: Path, *kept: str, **env: str) -> subprocess.CompletedProcess:
    jobs = tmp_path / "a.jobs"
    jobs.write_text("# a comment\nrun-a configs/cpu_mini.yaml --data.order 0\n\nrun-b configs/cpu_mini.yaml\n")
    return _run_queue(jobs, tmp_path / "out", *kept, env={**os.environ, **env})


def test_no_line_starts_after_start_before(tmp_path):
    done = _queue(tmp_path, START_BEFORE="1 hour ago")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [s.split()[1] for s in lines] == ["run-a:", "run-b:"]
    assert all("not started (START_BEFORE" in s for s in lines)
    assert not list((tmp_path / "out").glob("run-*"))  # no log, no lock, no run folder


def test_start_before_that_is_no_time_is_one_line(tmp_path):
    done = _queue(tmp_path, START_BEFORE="half past never")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "queue.sh: START_BEFORE=half past never is not a time date(1) reads"
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(shutil.which("flock") is None, reason="needs flock")
def test_a_finished_run_whose_record_was_not_kept_is_kept(tmp_path):
    """A lane stopped between a run's end and its keeping: the next queue keeps it, late or not, and starts nothing."""
    run = tmp_path / "out" / "run-a"
    run.mkdir(parents=True)
    for name in ("config.yaml", "metrics.jsonl", "summary.json"):
        (run / name).write_text("{}\n")
    done = _queue(tmp_path, str(tmp_path / "kept"), START_BEFORE="1 hour ago")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "kept" / "run-a" / "summary.json").is_file()
    assert "run-b: not started" in done.stdout and not (tmp_path / "kept" / "run-b").exists()


def _start_from_queue(
    tmp_path: Path, holder_s: float, start_before_in: float | None = None
) -> tuple[subprocess.CompletedProcess, Path]:
    """A queue whose one line starts from OUT/src; a process holds OUT/src.lock for holder_s seconds (as a lane
    running src would) and then writes src's first metrics line."""
    out = tmp_path / "out"
    (out / "src").mkdir(parents=True)
    jobs = tmp_path / "b.jobs"
    jobs.write_text(f"run-b configs/no_such.yaml --start_from {out / 'src'}\n")
    metrics = out / "src" / "metrics.jsonl"
    holder = None
    if holder_s:
        holder = subprocess.Popen(
            ["flock", str(out / "src.lock"), "bash", "-c", f"sleep {holder_s}; echo '{{}}' > {metrics}"]
        )
        for _ in range(100):  # the lock is taken before the queue looks at it
            if subprocess.run(["flock", "-n", str(out / "src.lock"), "true"]).returncode:
                break
            subprocess.run(["sleep", "0.05"])
    when = {} if start_before_in is None else {"START_BEFORE": f"@{int(time.time() + start_before_in)}"}
    done = _run_queue(jobs, out, env={**os.environ, "QUEUE_POLL_S": "0.1", **when})
    if holder:
        holder.wait(timeout=30)
    return done, metrics


@pytest.mark.skipif(shutil.which("flock") is None, reason="needs flock")
def test_a_line_starting_from_a_running_line_waits_for_its_first_task(tmp_path):
    done, metrics = _start_from_queue(tmp_path, holder_s=1.5)
    assert done.returncode == 0, done.stderr
    assert "run-b: waits for" in done.stdout.splitlines()[0]
    log = tmp_path / "out" / "run-b.log"
    assert log.stat().st_mtime_ns >= metrics.stat().st_mtime_ns  # started only once src had its first task


@pytest.mark.skipif(shutil.which("flock") is None, reason="needs flock")
def test_a_line_starting_from_a_run_nobody_runs_does_not_wait(tmp_path):
    done, metrics = _start_from_queue(tmp_path, holder_s=0)
    assert done.returncode == 0, done.stderr
    assert "waits for" not in done.stdout
    assert (tmp_path / "out" / "run-b.log").exists() and not metrics.exists()


@pytest.mark.skipif(shutil.which("flock") is None, reason="needs flock")
def test_start_before_is_checked_again_after_the_wait(tmp_path):
    """A line that waited for its source past START_BEFORE does not start then."""
    done, metrics = _start_from_queue(tmp_path, holder_s=6, start_before_in=3)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    assert "run-b: waits for" in out[0] and "run-b: not started (START_BEFORE" in out[1]
    assert metrics.exists() and not (tmp_path / "out" / "run-b.log").exists()


def _fake_errwise(tmp_path: Path) -> dict[str, str]:
    """An `errwise` first on PATH that prints its arguments (the run's log gets them) and fails as a run would."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "errwise"
    fake.write_text('#!/usr/bin/env bash\necho "args: $*"\nexit 1\n')
    fake.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.skipif(shutil.which("flock") is None, reason="needs flock")
@pytest.mark.parametrize("src_state", ["absent", "record without checkpoint"])
def test_a_line_whose_source_has_no_first_task_runs_without_start_from(tmp_path, src_state):
    """A --start_from folder that is not there, or holds a kept record's metrics but no checkpoint: the line trains
    its own task 1 (the rest of its arguments as written) and the queue says so."""
    out = tmp_path / "out"
    src = out / "src"
    if src_state != "absent":
        src.mkdir(parents=True)
        (src / "metrics.jsonl").write_text("{}\n")
    jobs = tmp_path / "c.jobs"
    jobs.write_text(f"run-c configs/x.yaml --data.order 3 --start_from {src} --method.name finetune\n")
    done = _run_queue(jobs, out, env=_fake_errwise(tmp_path))
    assert done.returncode == 0, done.stderr
    assert f"run-c: {src} holds no first task to copy: runs without --start_from" in done.stdout
    log = (out / "run-c.log").read_text()
    assert log.splitlines()[0] == "args: run configs/x.yaml --data.order 3 --method.name finetune --output_dir " + str(
        out / "run-c"
    )


@pytest.mark.skipif(shutil.which("flock") is None, reason="needs flock")
@pytest.mark.parametrize("saved", ["null", "SRC"])
def test_a_resumed_line_keeps_start_from_as_it_began(tmp_path, saved):
    """A run with a completed task resumes with --start_from only if it began with it (errwise resumes the saved
    config alone), whether or not its source is still there."""
    out = tmp_path / "out"
    src = out / "src"
    run = out / "run-d"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text("{}\n")
    (run / "config.yaml").write_text(f"start_from: {src if saved == 'SRC' else 'null'}\n")
    jobs = tmp_path / "d.jobs"
    jobs.write_text(f"run-d configs/x.yaml --start_from {src}\n")
    done = _run_queue(jobs, out, env=_fake_errwise(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "holds no first task" not in done.stdout
    with_src = f"--start_from {src} " if saved == "SRC" else ""
    assert f"args: run configs/x.yaml {with_src}--output_dir {run}" in (out / "run-d.log").read_text()
