"""kill -9 at moments spread over every phase of a tiny run, including while a checkpoint, the memory or the metrics
line is being written; SIGTERM; a second process on the same folder. Each resume must end with the numbers of the
uninterrupted run: the same accuracy matrix, the same predictions, the same losses.

The runs are children forked by tests/crash_driver.py, which imports torch once (an attempt costs ~1 s, not ~8).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ARGV = [
    "--data.num_tasks", "3", "--data.relations_per_task", "2", "--data.train_size", "8", "--data.test_size", "4",
    "--model.lora_r", "4", "--model.lora_alpha", "8", "--train.epochs", "1", "--train.batch_size", "4",
    "--train.lr", "1e-3", "--method.memory_per_relation", "2", "--eval.batch_size", "8",
]  # fmt: skip

# name: [(hook, tasks completed after the kill)], then a last attempt that runs to the end. Task 1 has 4 optimiser
# steps, task 2 has 5 (T2's first step is the 5th of the run); files are task_00, task_01, task_02.
MOMENTS = {
    "start, config.yaml half-written": [({"replace": "config.yaml", "at": "torn"}, 0)],
    "T1 training, first step": [({"step": 1}, 0)],
    "T2 training, mid-task": [({"step": 7}, 1)],
    "T2 memory selection": [({"call": "errwise.run.update_memory", "n": 2}, 1)],
    "T2 evaluation": [({"call": "errwise.run.predict_with", "n": 2}, 1)],
    "T2 checkpoint half-written": [({"safetensors": 2}, 1)],
    "T2 memory file half-written": [({"replace": "memory/task_01.json", "at": "torn"}, 1)],
    "T2 predictions written, matrix not": [({"replace": "accuracy_matrix.json", "n": 2, "at": "before"}, 1)],
    "T2 metrics line half-written": [({"replace": "metrics.jsonl", "n": 2, "at": "torn"}, 1)],
    "T2 metrics line renamed": [({"replace": "metrics.jsonl", "n": 2, "at": "after"}, 2)],
    "T3 redone over its own checkpoint, killed between delete and rename": [
        ({"replace": "memory/task_02.json", "at": "before"}, 2),
        ({"rmtree": "checkpoints/task_02"}, 2),
    ],
    "end, summary.json half-written": [({"replace": "summary.json", "at": "torn"}, 3)],
    "killed again in every resume": [({"step": 2}, 0), ({"step": 5}, 1), ({"safetensors": 2}, 2)],
}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def results_of(folder: Path) -> dict:
    lines = read_jsonl(folder / "metrics.jsonl")
    return {
        "matrix": json.loads((folder / "accuracy_matrix.json").read_text()),
        "predictions": [(folder / "predictions" / f"task_{i:02d}.jsonl").read_text() for i in range(3)],
        "memory": [json.loads((folder / "memory" / f"task_{i:02d}.json").read_text()) for i in range(3)],
        "losses": [(row["task"], row["train_loss"], row["train_steps"]) for row in lines],
        "final": json.loads((folder / "summary.json").read_text())["final_accuracy"],
    }


@pytest.fixture(scope="module")
def crashes(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("crashes")
    scenarios = {"reference": {"folder": str(root / "reference"), "attempts": [None]}}
    for i, (name, kills) in enumerate(MOMENTS.items()):
        scenarios[name] = {"folder": str(root / f"m{i}"), "attempts": [hook for hook, _ in kills] + [None]}
    scenarios["SIGTERM in T2 training"] = {
        "folder": str(root / "sigterm"),
        "attempts": [{"signal": "SIGTERM", "call": "errwise.run.train", "n": 2}, None],
    }
    scenarios["a second process on the folder"] = {
        "folder": str(root / "second"),
        "attempts": [{"pause": "errwise.run.train", "n": 2, "second": True}],
    }
    plan = {"argv": [*ARGV, "--model.name", str(tiny_model_dir)], "scenarios": scenarios}
    (root / "plan.json").write_text(json.dumps(plan))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    driver = Path(__file__).resolve().parent / "crash_driver.py"
    subprocess.run(
        [sys.executable, str(driver), str(root / "plan.json"), str(root / "results.json")],
        env=env,
        check=True,
        timeout=600,
    )
    return root, json.loads((root / "results.json").read_text())


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_a_kill_loses_at_most_the_task_in_progress(crashes, moment):
    root, results = crashes
    attempts = results[moment]
    expected = [done for _, done in MOMENTS[moment]]
    assert [a["signal"] for a in attempts[:-1]] == ["SIGKILL"] * len(expected), attempts
    assert [a["tasks_done"] for a in attempts[:-1]] == expected
    last = attempts[-1]
    assert last["code"] == 0, last["stderr"][-3000:]
    folder = root / f"m{list(MOMENTS).index(moment)}"
    assert results_of(folder) == results_of(root / "reference")
    assert not list(folder.rglob("*.tmp"))  # half-written files and folders were cleaned up


def test_sigterm_is_ctrl_c(crashes):
    root, results = crashes
    stopped, resumed = results["SIGTERM in T2 training"]
    assert stopped["code"] == 130 and stopped["tasks_done"] == 1
    assert stopped["stderr"].strip().splitlines()[-1].startswith("interrupted: completed tasks are saved")
    assert "Traceback" not in stopped["stderr"]
    assert resumed["code"] == 0
    assert results_of(root / "sigterm") == results_of(root / "reference")


def test_a_second_process_on_a_run_folder_is_refused_and_the_first_is_unharmed(crashes):
    root, results = crashes
    (first,) = results["a second process on the folder"]
    second = first["second"]
    assert second["code"] == 2
    lines = second["stderr"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "in use by another errwise process" in lines[0]
    assert second["tasks_done_before"] == second["tasks_done_after"] == 1  # it changed nothing
    assert first["code"] == 0, first["stderr"][-3000:]
    assert results_of(root / "second") == results_of(root / "reference")
