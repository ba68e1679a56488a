"""`errwise rescore`: a finished run's checkpoints scored again on more test instances, on the tiny model."""

from __future__ import annotations

import dataclasses
import json

import pytest

from errwise.cli import main
from errwise.errors import ErrwiseError
from errwise.report import compare_table, load_run
from errwise.rescore import rescore
from errwise.run import run
from test_run import read_jsonl, tiny_config


@pytest.fixture(scope="module")
def small_run(tiny_model_dir, tmp_path_factory):
    """A replay run scored on 2 of the split's 4 test instances per relation."""
    cfg = tiny_config(tiny_model_dir, tmp_path_factory.mktemp("rescore") / "replay-0")
    return run(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_test=2)))


def test_rescore_on_the_same_instances_reproduces_the_run(small_run, tmp_path):
    out = rescore(small_run, tmp_path / "same", max_test=2)
    for i in range(3):
        a = read_jsonl(small_run / "predictions" / f"task_{i:02d}.jsonl")
        b = read_jsonl(out / "predictions" / f"task_{i:02d}.jsonl")
        assert a == b
    assert [r["accuracy_row"] for r in read_jsonl(out / "metrics.jsonl")] == [
        r["accuracy_row"] for r in read_jsonl(small_run / "metrics.jsonl")
    ]


def test_rescore_on_more_instances_is_a_run_folder_with_a_superset_of_the_sentences(small_run, tmp_path):
    assert main(["rescore", str(small_run), "--max-test", "4", "--out", str(tmp_path)]) == 0
    out = tmp_path / small_run.name
    lines, original = read_jsonl(out / "metrics.jsonl"), read_jsonl(small_run / "metrics.jsonl")
    for i, (line, old) in enumerate(zip(lines, original)):
        assert line["n_test"] == 4 * 2 * (i + 1) and old["n_test"] == 2 * 2 * (i + 1)
        assert line["train_steps"] == old["train_steps"] and line["train_loss"] == old["train_loss"]
        preds = read_jsonl(out / "predictions" / f"task_{i:02d}.jsonl")
        uids = {p["uid"] for p in preds}
        assert uids > {p["uid"] for p in read_jsonl(small_run / "predictions" / f"task_{i:02d}.jsonl")}
        assert line["seen_accuracy"] == sum(p["correct"] for p in preds) / len(preds)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_accuracy"] == lines[-1]["seen_accuracy"]
    assert summary["rescored_from"] == str(small_run)
    result = load_run(out)
    assert result.complete and result.config["data"]["max_test"] == 4
    table = compare_table([small_run, out], baseline="replay (data.max_test=2)")
    assert "data.max_test=4" in table and "data.max_test=2" in table  # two groups: never mixed

    # a crash mid-rescore loses at most the task in progress: drop the last task and rescore again
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines[:2]))
    (out / "summary.json").unlink()
    rescore(small_run, out, max_test=4)
    again = read_jsonl(out / "metrics.jsonl")
    assert [r["accuracy_row"] for r in again] == [r["accuracy_row"] for r in lines]
    assert json.loads((out / "summary.json").read_text())["final_accuracy"] == summary["final_accuracy"]
    with pytest.raises(ErrwiseError, match="other settings"):
        rescore(small_run, out, max_test=3)


def test_rescore_refuses_what_it_cannot_score(tiny_model_dir, small_run, tmp_path, capsys):
    with pytest.raises(ErrwiseError, match="is the run itself"):
        rescore(small_run, small_run, max_test=4)
    assert main(["rescore", str(tmp_path / "nowhere"), "--max-test", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nowhere" in err and len(err.strip().splitlines()) == 1
    lessons = tmp_path / "lessons-0"
    lessons.mkdir()
    cfg = tiny_config(tiny_model_dir, lessons, "lessons")
    from errwise.config import save_yaml

    save_yaml(cfg, lessons / "config.yaml")
    (lessons / "metrics.jsonl").write_text(json.dumps({"task": 0, "accuracy_row": [0.5], "seconds": 1.0}) + "\n")
    with pytest.raises(ErrwiseError, match="hints"):
        rescore(lessons, tmp_path / "x", max_test=4)


def test_rescore_with_another_search_is_its_own_group(small_run, tmp_path):
    """--search first_token: the run's checkpoints scored with eval.search first_token (the same predictions as
    predicting with that search from the checkpoint), in a folder and a compare group of their own."""
    import torch

    from errwise.model import load_tokenizer
    from errwise.run import eval_instances, load_run_model, make_stream, predict_with, resume_config

    assert main(["rescore", str(small_run), "--max-test", "2", "--search", "first_token"]) == 0
    out = small_run.parent / f"{small_run.name}-test2-first_token"
    cfg = resume_config(out)
    assert cfg.eval.search == "first_token" and resume_config(small_run).eval.search == "exact"
    stream = make_stream(cfg)
    model = load_run_model(cfg, torch.device("cpu"), small_run / "checkpoints" / "task_02")
    test = eval_instances(stream, 2, "test")
    seen = tuple(stream.relation(r) for r in stream.seen_relations(2))
    expected = predict_with(cfg, model, load_tokenizer(cfg.model.name), test, seen)
    assert [p["pred"] for p in read_jsonl(out / "predictions" / "task_02.jsonl")] == expected
    assert "eval.search=first_token" in compare_table([small_run, out], baseline="replay (eval.search=exact)")
