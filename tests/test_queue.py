"""benchmarks/queue.sh's guards, run as the shell script (no run starts in these tests)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

QUEUE = Path(__file__).resolve().parents[1] / "benchmarks" / "queue.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _queue(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    jobs = tmp_path / "a.jobs"
    jobs.write_text("# a comment\nrun-a configs/cpu_mini.yaml --data.order 0\n\nrun-b configs/cpu_mini.yaml\n")
    return subprocess.run(
        ["bash", str(QUEUE), str(jobs), str(tmp_path / "out"), "1"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=60,
    )


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
