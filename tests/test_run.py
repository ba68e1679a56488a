"""The loop and the run-folder contract, for every registered method, on the tiny model (seconds)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys

import pytest
import torch
import transformers

from errwise.cli import main
from errwise.config import (
    DataConfig,
    ErrwiseConfig,
    EvalConfig,
    InstructorConfig,
    LessonsConfig,
    MethodConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from errwise.data.types import RelationInstance
from errwise.errors import ErrwiseError
from errwise.methods import METHODS
from errwise.run import make_stream, run


def tiny_config(model_dir, out, method="replay", **method_kw) -> RunConfig:
    errwise_names = {f.name for f in dataclasses.fields(ErrwiseConfig)}
    errwise_kw = {k: method_kw.pop(k) for k in list(method_kw) if k in errwise_names}
    return RunConfig(
        data=DataConfig(dataset="builtin", num_tasks=3, relations_per_task=2, train_size=8, test_size=4),
        model=ModelConfig(name=str(model_dir), lora_r=4, lora_alpha=8),
        # No consolidation round for any method unless a test asks for one (errwise's default schedule: test_config)
        train=TrainConfig(epochs=1, batch_size=4, lr=1e-3, consolidate=0.0, defer_memory=False),
        method=MethodConfig(name=method, **{"memory_per_relation": 2, **method_kw}),
        errwise=ErrwiseConfig(**errwise_kw),
        eval=EvalConfig(batch_size=8),
        # instructor/lessons: the tiny model writes (garbage) data and lessons in-process, quickly
        instructor=InstructorConfig(model=str(model_dir), max_tokens=24, max_errors=2),
        lessons=LessonsConfig(embedder="target", max_groups=2),
        output_dir=str(out),
    )


def recorded_rounds(monkeypatch) -> list[list]:
    """A list that gets every training round's examples, in order, as the run loop trains them."""
    import errwise.run as run_mod

    trained: list[list] = []
    real_train = run_mod.train
    monkeypatch.setattr(
        run_mod,
        "train",
        lambda m, t, examples, **kw: (trained.append(list(examples)), real_train(m, t, examples, **kw))[1],
    )
    return trained


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_meets_the_run_folder_contract(tiny_model_dir, tmp_path, method):
    check_run_folder(run(tiny_config(tiny_model_dir, tmp_path / method, method)))


def check_run_folder(out) -> None:
    """The run-folder contract (docs/run-folder.md) of a 3-task tiny run with 2 relations per task."""
    assert (out / "config.yaml").is_file()
    lines = read_jsonl(out / "metrics.jsonl")
    assert [row["task"] for row in lines] == [0, 1, 2]
    for i, row in enumerate(lines):
        assert len(row["accuracy_row"]) == i + 1
        assert row["n_test"] == 4 * 2 * (i + 1)  # test instances of every seen relation
        assert 0.0 <= row["seen_accuracy"] <= 1.0
        preds = read_jsonl(out / "predictions" / f"task_{i:02d}.jsonl")
        assert len(preds) == row["n_test"]
        seen = {r for line in lines[: i + 1] for r in line["relations"]}
        assert all(p["pred"] in seen and p["gold"] in seen for p in preds)  # class-incremental
        assert (out / "checkpoints" / f"task_{i:02d}" / "adapter_config.json").is_file()
        memory = json.loads((out / "memory" / f"task_{i:02d}.json").read_text())
        assert set(memory) == seen and all(len(v) == 2 for v in memory.values())
    matrix = json.loads((out / "accuracy_matrix.json").read_text())["matrix"]
    assert [len(r) for r in matrix] == [1, 2, 3]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_accuracy"] == lines[-1]["seen_accuracy"]
    assert set(json.loads((out / "relations.json").read_text())) >= seen


def test_errwise_distills_the_previous_model_s_view_of_the_old_relations(tiny_model_dir, tmp_path, monkeypatch):
    """errwise.distill_weight: before a task's first round the model scores the old relations' labels after each
    training instance's plain prompt; that instance's plain example (once) carries its top-k and their softmax, the
    loss gains the KL term, distill/ records the targets. The consolidation round carries none. With distill_weight
    0 (the default) none of this runs: no targets are scored and training takes the former path."""
    import errwise.methods.errwise as errwise_mod
    import errwise.train as train_mod

    trained = recorded_rounds(monkeypatch)  # every round's examples, in order
    cfg = tiny_config(tiny_model_dir, tmp_path / "on", "errwise", distill_weight=1.0, distill_top_k=3)
    train = dataclasses.replace(cfg.train, consolidate=0.25, defer_memory=True)  # errwise's default schedule
    cfg = dataclasses.replace(cfg, train=train)
    out = run(cfg)
    check_run_folder(out)
    stream = make_stream(cfg)
    name = {r.id: r.name for r in stream.relations}
    lines = read_jsonl(out / "metrics.jsonl")
    assert len(trained) == 6  # per task: the first round, then the consolidation round (never distilled)
    assert not any(ex.distill for i in (0, 1, 3, 5) for ex in trained[i])
    assert lines[0]["train_distill_loss"] == 0 and not (out / "distill" / "task_00.jsonl").exists()  # nothing old yet
    for t in (1, 2):
        old = [r for line in lines[:t] for r in line["relations"]]
        rows = read_jsonl(out / "distill" / f"task_{t:02d}.jsonl")
        assert [r["uid"] for r in rows] == [x.uid for x in stream.tasks[t].train]
        for r in rows:
            assert len(r["targets"]) == min(3, len(old)) and {rel for rel, _ in r["targets"]} <= set(old)
            probs = [p for _, p in r["targets"]]
            assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-3)
        carried = {ex.uid: ex for ex in trained[2 * t] if ex.distill}
        assert set(carried) == {r["uid"] for r in rows}  # every training instance's plain example, once
        assert sum(bool(ex.distill) for ex in trained[2 * t]) == len(rows)
        for r in rows:
            ex = carried[r["uid"]]
            assert ex.kind in ("plain", "plain-error") and ex.distill_weight == 1.0 and ex.distill_temperature == 2.0
            assert [(n, round(p, 4)) for n, p in ex.distill] == [(name[rel], p) for rel, p in r["targets"]]
        assert lines[t]["train_distill_loss"] > 0 and lines[t]["consolidation"]["distill_loss"] == 0

    def never(*args, **kw):
        raise AssertionError("the distillation ran with distill_weight 0")

    monkeypatch.setattr(errwise_mod, "soft_targets", never)
    monkeypatch.setattr(train_mod, "packed_loss", never)
    off = run(dataclasses.replace(cfg, output_dir=str(tmp_path / "off"), errwise=ErrwiseConfig()))
    assert not (off / "distill").exists()
    for a, b in zip(read_jsonl(off / "metrics.jsonl"), lines):
        assert a["train_distill_loss"] == 0 and a["train_steps"] == b["train_steps"]
        assert a["train_kinds"] == b["train_kinds"] and a["train_tokens"] <= b["train_tokens"]
    with pytest.raises(ErrwiseError, match="distill_top_k"):
        ErrwiseConfig(distill_top_k=1)
    with pytest.raises(ErrwiseError, match="distill_weight"):
        ErrwiseConfig(distill_weight=-1)
    with pytest.raises(ErrwiseError, match="distill_temperature"):
        ErrwiseConfig(distill_temperature=0)


def test_methods_train_on_what_they_promise(tiny_model_dir, tmp_path):
    """finetune trains on the task only; replay adds the memory; joint everything so far."""
    sizes = {}
    for method in ("finetune", "replay", "joint"):
        out = run(tiny_config(tiny_model_dir, tmp_path / method, method))
        sizes[method] = [row["train_examples"] for row in read_jsonl(out / "metrics.jsonl")]
    assert sizes["finetune"] == [16, 16, 16]
    assert sizes["replay"] == [16, 16 + 4, 16 + 8]
    assert sizes["joint"] == [16, 32, 48]


def test_errwise_records_error_cases(tiny_model_dir, tmp_path):
    out = run(tiny_config(tiny_model_dir, tmp_path / "e", "errwise", error_fraction=None))
    rows = read_jsonl(out / "error_cases" / "task_01.jsonl")
    assert {r["source"] for r in rows} == {"train", "memory"}
    assert len(rows) == 16 + 4
    assert all(r["correct"] == (r["gold"] == r["pred"]) for r in rows)
    kinds = read_jsonl(out / "metrics.jsonl")[1]["train_kinds"]
    n_err = sum(not r["correct"] for r in rows)
    assert kinds.get("error", 0) == n_err and kinds.get("contrastive", 0) == n_err
    summary = json.loads((out / "error_cases" / "task_01_summary.json").read_text())
    assert summary["train"]["initial_errors"] + summary["train"].get("initial_correct", 0) == 16
    from errwise.report import compare_table

    table = compare_table([out])
    row = next(line for line in table.splitlines() if line.startswith("| errwise | T2 |"))
    assert row.split("|")[3].strip() == str(summary["train"]["initial_errors"])


def test_errwise_caps_the_share_of_error_focused_examples(tiny_model_dir, tmp_path):
    """Every case once in the plain instruction, then error-focused examples for a quarter of the total."""
    out = run(tiny_config(tiny_model_dir, tmp_path / "cap", "errwise", error_fraction=0.25))
    kinds = read_jsonl(out / "metrics.jsonl")[1]["train_kinds"]
    rows = read_jsonl(out / "error_cases" / "task_01.jsonl")
    plain = sum(kinds.get(k, 0) for k in ("plain", "memory", "plain-error", "memory-error"))
    assert plain == len(rows) == 20
    focused = kinds.get("error", 0) + kinds.get("contrastive", 0)
    assert focused == round(0.25 / 0.75 * 20)


@pytest.mark.parametrize("upsample", [False, True])
def test_errwise_error_fraction_is_a_cap_unless_upsampling(tiny_model_dir, tmp_path, upsample):
    """Fewer error-focused examples than the share allows stay as they are (a lone error must not become a
    dozen copies); error_upsample repeats them up to the share, the former behaviour."""
    cfg = tiny_config(tiny_model_dir, tmp_path / "up", "errwise", error_fraction=0.9, error_upsample=upsample)
    out = run(cfg)
    kinds = read_jsonl(out / "metrics.jsonl")[1]["train_kinds"]
    n_err = sum(not r["correct"] for r in read_jsonl(out / "error_cases" / "task_01.jsonl"))
    assert 0 < 2 * n_err < 180  # confront + contrastive per error, below the share 0.9 / 0.1 * 20
    assert kinds.get("error", 0) + kinds.get("contrastive", 0) == (180 if upsample else 2 * n_err)


def test_errwise_without_memory_errors_still_replays_the_memory(tiny_model_dir, tmp_path):
    out = run(tiny_config(tiny_model_dir, tmp_path / "cur", "errwise", memory_errors=False))
    kinds = read_jsonl(out / "metrics.jsonl")[1]["train_kinds"]
    rows = read_jsonl(out / "error_cases" / "task_01.jsonl")
    memory = [r for r in rows if r["source"] == "memory"]
    assert len(memory) == 4 and all(r["correct"] for r in memory)  # not mined: replayed as correct cases
    assert kinds.get("memory", 0) == 4 and "memory-error" not in kinds


def test_errwise_error_scope_learned_keeps_only_errors_on_trained_relations(tiny_model_dir, tmp_path):
    """error_scope learned: a wrong initial answer makes an error case only on an instance of a relation of an
    earlier task (the memory); the new task's instances, never taught, are trained like correct cases."""
    out = run(tiny_config(tiny_model_dir, tmp_path / "scope", "errwise", error_fraction=None, error_scope="learned"))
    lines = read_jsonl(out / "metrics.jsonl")
    first = read_jsonl(out / "error_cases" / "task_00.jsonl")
    assert any(not r["correct"] for r in first)  # errors were made, yet none is treated as one: nothing learned
    assert set(lines[0]["train_kinds"]) == {"plain"}
    n_old = n_new = 0
    for t in (1, 2):
        rows = read_jsonl(out / "error_cases" / f"task_{t:02d}.jsonl")
        old = {r for line in lines[:t] for r in line["relations"]}
        assert all((r["source"] == "memory") == (r["gold"] in old) for r in rows)
        errors = sum(not r["correct"] and r["gold"] in old for r in rows)
        n_old, n_new = n_old + errors, n_new + sum(not r["correct"] and r["gold"] not in old for r in rows)
        kinds = lines[t]["train_kinds"]
        assert kinds.get("error", 0) == kinds.get("contrastive", 0) == kinds.get("memory-error", 0) == errors
        assert "plain-error" not in kinds and kinds["plain"] == sum(r["source"] == "train" for r in rows)
    assert n_old and n_new  # both kinds occurred, so the counts above tell the scopes apart
    with pytest.raises(ErrwiseError, match="error_scope"):
        ErrwiseConfig(error_scope="new")


@pytest.mark.parametrize("unseen", [False, True])
def test_errwise_probe_is_held_out_and_its_errors_train_the_replayed_instances(
    tiny_model_dir, tmp_path, monkeypatch, unseen
):
    """probe_per_relation: that many of each relation's memory are answered before each round but never trained
    on nor shown; a probe error (gold r answered r') makes confronting and contrastive examples from r's replayed
    instances, with instances of r' as shots (and, with contrastive_symmetric, the mirror answered r').
    probe_unseen: the probe is drawn before training and not trained on even in its own task's first round."""

    trained = recorded_rounds(monkeypatch)  # every example of every round, in order
    cfg = tiny_config(
        tiny_model_dir,
        tmp_path / "probe",
        "errwise",
        memory_per_relation=3,
        probe_per_relation=1,
        error_fraction=None,
        error_scope="learned",
        contrastive_symmetric=True,
        probe_unseen=unseen,
    )
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, consolidate=0.5, budget="replay"))
    out = run(cfg)
    probes = {}  # uid -> gold, over every task
    n_probe_errors = 0
    for t in (1, 2):
        for name in (f"task_{t:02d}.jsonl", f"task_{t:02d}_consolidation.jsonl"):
            rows = read_jsonl(out / "error_cases" / name)
            memory = json.loads((out / "memory" / f"task_{t - 1 if 'consol' not in name else t:02d}.json").read_text())
            probe = [r for r in rows if r["source"] == "probe"]
            assert len(probe) == len(memory)  # one per relation, the other two replayed
            assert sum(r["source"] == "memory" for r in rows) == 2 * len(memory)
            for r in probe:
                assert probes.setdefault(r["uid"], r["gold"]) == r["gold"]
                assert r["uid"] in memory[r["gold"]]  # kept in the memory's storage
            if unseen and "consol" not in name:  # this task's probe is not even among its training cases
                train = [r["uid"] for r in rows if r["source"] == "train"]
                assert len(train) == 16 - 2 and not set(train) & set(probes)
            n_probe_errors += sum(not r["correct"] for r in probe)
    # The same probe at every task: each relation's probe uid is the same one wherever it appears.
    assert len(set(probes.values())) == len(probes)
    stream = make_stream(cfg)
    text = {x.uid: x.text for t in stream.tasks for x in t.train}
    task_of = {r: t.index for t in stream.tasks for r in t.relations}
    assert len(trained) == 6  # per task: the first round, then the consolidation round
    for i, round_ in enumerate(trained):
        # A probe instance is its task's training data in that task's first round, and never trained on after.
        held = [u for u, gold in probes.items() if unseen or (task_of[gold], 0) != divmod(i, 2)]
        for ex in round_:
            assert ex.uid not in held and not any(text[u] in ex.prompt for u in held)  # nor shown as a shot
    # The last round's probe errors, one by one: confronted and contrasted on the relation's replayed instances.
    memory = json.loads((out / "memory" / "task_02.json").read_text())
    last = [r for r in read_jsonl(out / "error_cases" / "task_02_consolidation.jsonl") if r["source"] == "probe"]
    assert n_probe_errors > 0
    for r in (r for r in last if not r["correct"]):
        gold, wrong = stream.relation(r["gold"]).name, stream.relation(r["pred"]).name
        replayed = set(memory[r["gold"]]) - {r["uid"]}
        confront = [
            ex for ex in trained[-1] if ex.kind == "probe-error" and ex.uid in replayed and f'"{wrong}"' in ex.prompt
        ]
        assert len(confront) == len(replayed) == 2 and all(ex.answer == gold for ex in confront)
        mirror = [ex for ex in trained[-1] if ex.kind == "probe-contrastive-mirror" and ex.answer == wrong]
        assert any(text[u] in ex.prompt for ex in mirror for u in replayed)  # r's instance shown beside r'
    kinds = [ex.kind for round_ in trained for ex in round_]
    for prefix in ("", "probe-"):
        assert kinds.count(prefix + "contrastive-mirror") == kinds.count(prefix + "contrastive") > 0
    from errwise.report import compare_table

    summary = json.loads((out / "error_cases" / "task_02_summary.json").read_text())
    lines = compare_table([out]).splitlines()
    header = next(line for line in lines if line.startswith("| Method | Task |")).split("|")
    row = next(line for line in lines if line.startswith("| errwise | T3 |")).split("|")
    assert row[header.index(" Probe errors ")].strip() == str(summary["probe"].get("initial_errors", 0))
    with pytest.raises(ErrwiseError, match="probe_per_relation"):
        RunConfig(method=MethodConfig(memory_per_relation=2), errwise=ErrwiseConfig(probe_per_relation=2))
    with pytest.raises(ErrwiseError, match="probe_unseen"):
        ErrwiseConfig(probe_unseen=True)


def test_errwise_ranks_each_error_case_against_its_own_wrong_answer(tiny_model_dir, tmp_path):
    """errwise.rank_weight: same examples and steps, plus a forward over each error case's wrong answer."""
    lines = {}
    for w in (0.0, 1.0):
        out = run(tiny_config(tiny_model_dir, tmp_path / f"rank-{w}", "errwise", rank_weight=w))
        lines[w] = read_jsonl(out / "metrics.jsonl")
    errors = sum(not r["correct"] for r in read_jsonl(tmp_path / "rank-1.0" / "error_cases" / "task_01.jsonl"))
    assert errors > 0
    for off, on in zip(lines[0.0], lines[1.0]):
        assert on["train_kinds"] == off["train_kinds"] and on["train_steps"] == off["train_steps"]
    assert lines[1.0][1]["train_tokens"] > lines[0.0][1]["train_tokens"]  # the wrong answers' sequences
    assert lines[1.0][1]["train_loss"] != lines[0.0][1]["train_loss"]


def test_errwise_mirror_rank_rehearses_the_confused_relation_against_the_gold(tiny_model_dir, tmp_path, monkeypatch):
    """errwise.mirror_rank: each error case (gold r answered r') gets an instance of r' in the plain instruction,
    answered r' with r as its ranked-below answer; none without the switch."""

    trained = recorded_rounds(monkeypatch)
    cfg = tiny_config(tiny_model_dir, tmp_path / "mirror", "errwise", error_fraction=None, mirror_rank=0.5)
    out = run(cfg)
    stream = make_stream(cfg)
    name = {r.id: r.name for r in stream.relations}
    uid_rel = {x.uid: x.relation for t in stream.tasks for x in t.train}
    rows = read_jsonl(out / "error_cases" / "task_01.jsonl")
    errors = [r for r in rows if not r["correct"]]
    assert errors
    mirrors = [ex for ex in trained[1] if ex.kind == "mirror-rank"]
    # One per error case (every confused relation has instances here: the memory or the task's data).
    assert len(mirrors) == len(errors)
    want = sorted((name[r["pred"]], name[r["gold"]]) for r in errors)
    assert sorted((ex.answer, ex.rejected) for ex in mirrors) == want
    for ex in mirrors:
        assert ex.rank_weight == 0.5 and name[uid_rel[ex.uid]] == ex.answer
        assert ex.prompt.startswith("What is the relation of the head to the tail?")  # the tested format
    off = run(dataclasses.replace(cfg, output_dir=str(tmp_path / "off"), errwise=ErrwiseConfig(error_fraction=None)))
    assert "mirror-rank" not in read_jsonl(off / "metrics.jsonl")[1]["train_kinds"]
    assert read_jsonl(out / "metrics.jsonl")[1]["train_kinds"]["mirror-rank"] == len(errors)
    with pytest.raises(ErrwiseError, match="mirror_rank"):
        ErrwiseConfig(mirror_rank=-1)


def test_errwise_contrast_with_random_sets_error_cases_against_drawn_relations(tiny_model_dir, tmp_path, monkeypatch):
    """errwise.contrast_with `random` (the control fed random pairs): the same error cases, each set against a seen
    relation other than its gold drawn at random instead of the one the model answered; `answer` (the default) sets
    it against the model's answer."""
    trained = recorded_rounds(monkeypatch)
    cfg = tiny_config(tiny_model_dir, tmp_path / "random", "errwise", error_fraction=None, contrast_with="random")
    out = run(cfg)
    stream = make_stream(cfg)
    name = {r.id: r.name for r in stream.relations}
    seen = {name[r] for t in stream.tasks[:2] for r in t.relations}
    errors = [r for r in read_jsonl(out / "error_cases" / "task_01.jsonl") if not r["correct"]]
    assert len(errors) >= 5
    against = {ex.uid: ex.rejected for ex in trained[1] if ex.kind in ("plain-error", "memory-error")}
    assert set(against) == {r["uid"] for r in errors}
    for r in errors:
        assert against[r["uid"]] in seen - {name[r["gold"]]}
    assert any(against[r["uid"]] != name[r["pred"]] for r in errors)  # not the model's answers
    for ex in (ex for ex in trained[1] if ex.kind in ("error", "contrastive")):  # confronting and contrastive alike
        assert f'"{against[ex.uid]}"' in ex.prompt

    trained.clear()
    answer = run(
        dataclasses.replace(cfg, output_dir=str(tmp_path / "answer"), errwise=ErrwiseConfig(error_fraction=None))
    )
    errors = [r for r in read_jsonl(answer / "error_cases" / "task_01.jsonl") if not r["correct"]]
    against = {ex.uid: ex.rejected for ex in trained[1] if ex.kind in ("plain-error", "memory-error")}
    assert against == {r["uid"]: name[r["pred"]] for r in errors}
    with pytest.raises(ErrwiseError, match="contrast_with"):
        ErrwiseConfig(contrast_with="other")


def test_rival_record_sums_rival_probabilities_of_tasks_so_far(tmp_path):
    """The confusion record (errwise.pair_record) sums each pair's rival probabilities, both directions, over the
    consolidation rounds of tasks 0..upto."""
    from errwise.methods.errwise import rival_record

    def rows(*rivals):
        return "".join(
            json.dumps({"uid": u, "gold": g, "rival": r, "p_rival": p, "p_gold": 1 - p}) + "\n" for u, g, r, p in rivals
        )

    (tmp_path / "task_00_rivals.jsonl").write_text(rows(("a", "P1", "P2", 0.25), ("b", "P2", "P1", 0.5)))
    (tmp_path / "task_00.jsonl").write_text(json.dumps({"uid": "c", "gold": "P1", "pred": "P3", "correct": False}))
    (tmp_path / "task_01_rivals.jsonl").write_text(rows(("a", "P1", "P4", 0.125), ("b", "P2", "P1", 0.25)))
    (tmp_path / "task_02_rivals.jsonl").write_text(rows(("a", "P1", "P3", 0.75)))
    assert rival_record(tmp_path, 0) == {("P1", "P2"): 0.75}
    assert rival_record(tmp_path, 1) == {("P1", "P2"): 1.0, ("P1", "P4"): 0.125}


@pytest.mark.parametrize("mode", ["rivals", "random"])
def test_errwise_pair_record_contrasts_rival_pairs_both_ways_in_consolidation(
    tiny_model_dir, tmp_path, monkeypatch, mode
):
    """errwise.pair_record: at the end of each task but the last every memory instance gets its rival (the other seen
    relation with the best exact score of the model the task leaves); each later consolidation round adds, for the
    pair_record_top pairs with the most summed rival probability (`rivals`; `random`: as many pairs of seen
    relations drawn at random), a memory instance of each relation in the contrastive instruction against the other,
    on top of error_fraction's cap (the round's other examples are errwise's own); first rounds carry none, nor
    does `off`."""
    from errwise.methods.errwise import rival_record
    from errwise.model import load_tokenizer
    from errwise.run import load_run_model, scores_with

    trained = recorded_rounds(monkeypatch)
    cfg = tiny_config(tiny_model_dir, tmp_path / mode, "errwise", pair_record=mode, pair_record_top=2)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, consolidate=0.25, defer_memory=True))
    out = run(cfg)
    stream = make_stream(cfg)
    name = {r.id: r.name for r in stream.relations}
    by_uid = {x.uid: x for t in stream.tasks for x in t.train}
    assert len(trained) == 6  # per task: the first round, then the consolidation round
    assert not any(ex.kind == "record" for i in (0, 1, 2, 4) for ex in trained[i])  # task 1's round: no record yet
    assert not (out / "error_cases" / "task_02_rivals.jsonl").exists()  # the last task's would serve no round
    tok = load_tokenizer(cfg.model.name)
    for t in (0, 1):
        rows = read_jsonl(out / "error_cases" / f"task_{t:02d}_rivals.jsonl")
        memory = json.loads((out / "memory" / f"task_{t:02d}.json").read_text())
        assert [r["uid"] for r in rows] == [u for us in memory.values() for u in us]  # the memory the task leaves
        # The rival is the best other relation of the model the task leaves (its checkpoint), scored in full.
        model = load_run_model(cfg, torch.device("cpu"), out / "checkpoints" / f"task_{t:02d}")
        seen = [stream.relation(r) for task in stream.tasks[: t + 1] for r in task.relations]
        scores = scores_with(cfg, model, tok, [by_uid[r["uid"]] for r in rows], seen)
        for r, row in zip(rows, scores):
            gold = [x.id for x in seen].index(r["gold"])
            row[gold] = -float("inf")
            assert r["rival"] == seen[int(row.argmax())].id != r["gold"]
        records = [ex for ex in trained[2 * t + 3] if ex.kind == "record"]  # the next task's consolidation round
        got = sorted(tuple(sorted((ex.answer, ex.prompt.split('which is not "')[1].split('"')[0]))) for ex in records)
        record = rival_record(out / "error_cases", t)
        want = [tuple(sorted(name[r] for r in p)) for p in sorted(record, key=lambda p: (-record[p], p))][:2]
        assert want
        if mode == "rivals":
            assert got == sorted(w for w in want for _ in range(2))  # each pair both ways
        else:
            names = {name[r] for task in stream.tasks[: t + 2] for r in task.relations}
            assert len(got) == 2 * len(want) and {n for pair in got for n in pair} <= names
    second = trained[3]
    trained.clear()
    off = dataclasses.replace(cfg.errwise, pair_record="off")
    run(dataclasses.replace(cfg, output_dir=str(tmp_path / "off"), errwise=off))
    assert trained and not any(ex.kind == "record" for round_ in trained for ex in round_)
    assert not list((tmp_path / "off" / "error_cases").glob("*_rivals.jsonl"))
    # On top of error_fraction's cap and drawn after it: task 2's round is errwise's own plus the record's examples
    # (the runs are alike up to there: the record changes no earlier round, and scoring the rivals trains nothing).
    assert [ex for ex in second if ex.kind != "record"] == trained[3]
    with pytest.raises(ErrwiseError, match="pair_record"):
        ErrwiseConfig(pair_record="errors")


@pytest.mark.parametrize("mode", ["errors", "all", "random"])
def test_errwise_anchors_train_relation_descriptions_in_the_tested_format(tiny_model_dir, tmp_path, monkeypatch, mode):
    """errwise.anchors: the description of a relation as a pseudo-instance in the plain instruction, answered with
    the relation's name. `errors`: both relations of each error case; `all`: every seen relation once a round;
    `random`: as many as `errors` gives, relations drawn at random; none without the switch."""
    from errwise.prompts import anchor_instance

    trained = recorded_rounds(monkeypatch)
    cfg = tiny_config(tiny_model_dir, tmp_path / mode, "errwise", error_fraction=None, anchors=mode)
    out = run(cfg)
    stream = make_stream(cfg)
    by_name = {r.name: r for r in stream.relations}
    errors = [r for r in read_jsonl(out / "error_cases" / "task_01.jsonl") if not r["correct"]]
    assert errors
    anchors = [ex for ex in trained[1] if ex.kind == "anchor"]
    seen = [r for t in stream.tasks[:2] for r in t.relations]
    if mode == "errors":
        want = sorted(stream.relation(rel).name for r in errors for rel in (r["gold"], r["pred"]))
        assert sorted(ex.answer for ex in anchors) == want
    elif mode == "all":
        assert sorted(ex.answer for ex in anchors) == sorted(stream.relation(r).name for r in seen)
    else:
        assert len(anchors) == 2 * len(errors) and {ex.answer for ex in anchors} <= {
            stream.relation(r).name for r in seen
        }
    for ex in anchors:
        rel = by_name[ex.answer]
        assert rel.description and rel.description in ex.prompt
        assert ex.prompt.startswith("What is the relation of the head to the tail?")  # the tested format
        assert "Head: the subject\nTail: the object\n" in ex.prompt and ex.uid == f"anchor/{rel.id}"
    assert read_jsonl(out / "metrics.jsonl")[1]["train_kinds"]["anchor"] == len(anchors)
    inst = anchor_instance(seen_rel := stream.relation(seen[0]))
    assert (inst.head_text, inst.tail_text, inst.relation) == ("the subject", "the object", seen_rel.id)
    assert anchor_instance(dataclasses.replace(seen_rel, description=" ")) is None
    if mode == "errors":
        off = run(
            dataclasses.replace(cfg, output_dir=str(tmp_path / "off"), errwise=ErrwiseConfig(error_fraction=None))
        )
        assert "anchor" not in read_jsonl(off / "metrics.jsonl")[1]["train_kinds"]
        with pytest.raises(ErrwiseError, match="anchors"):
            ErrwiseConfig(anchors="some")


@pytest.mark.parametrize("mode", ["errors", "all"])
def test_errwise_entity_swap_trains_memory_instances_with_another_mention(tiny_model_dir, tmp_path, monkeypatch, mode):
    """errwise.entity_swap: each memory instance of a chosen relation twice in the plain instruction, once with its
    head replaced by another relation's instance's head, once with its tail replaced likewise, answered with its own
    relation. `errors`: the relations of the error cases, as often as they occur; `all`: every relation once."""
    trained = recorded_rounds(monkeypatch)
    cfg = tiny_config(tiny_model_dir, tmp_path / mode, "errwise", error_fraction=None, entity_swap=mode)
    out = run(cfg)
    stream = make_stream(cfg)
    instances = {x.uid: x for t in stream.tasks for x in (*t.train, *t.test)}
    name = {r.id: r.name for r in stream.relations}
    swaps = [ex for ex in trained[1] if ex.kind == "swap"]
    assert swaps and read_jsonl(out / "metrics.jsonl")[1]["train_kinds"]["swap"] == len(swaps)
    mentions = {role: {getattr(x, role + "_text") for x in instances.values()} for role in ("head", "tail")}
    per_relation: dict[str, int] = {}
    for ex in swaps:
        uid, variant = ex.uid.split("/swap-")
        role, mention = variant.split(":", 1)
        x = instances[uid]
        assert ex.answer == name[x.relation] and ex.prompt.startswith("What is the relation of the head to the tail?")
        kept = "tail" if role == "head" else "head"
        assert f"\n{role.capitalize()}: {mention}\n" in ex.prompt and mention in mentions[role]
        assert f"\n{kept.capitalize()}: {getattr(x, kept + '_text')}\n" in ex.prompt  # the other entity stays
        per_relation[x.relation] = per_relation.get(x.relation, 0) + 1
    memory = json.loads((out / "memory" / "task_00.json").read_text())  # task 1's relations, 2 instances each
    if mode == "all":
        assert per_relation == {rel: 2 * len(uids) for rel, uids in memory.items()}
    else:
        errors = [r for r in read_jsonl(out / "error_cases" / "task_01.jsonl") if not r["correct"]]
        counts = {rel: 0 for rel in memory}
        for r in errors:
            for rel in {r["gold"], r["pred"]} & set(memory) if r["gold"] != r["pred"] else ():
                counts[rel] += 1
        assert per_relation == {rel: 2 * len(memory[rel]) * n for rel, n in counts.items() if n}
    # the replacement itself: spans moved to match, either order of head and tail
    from errwise.methods.errwise import with_mention

    x = RelationInstance("r/1", ("Anna", "was", "born", "in", "New", "York", "."), (0, 1), (4, 6), "r")
    v = with_mention(x, "head", ["Karl", "Marx"])
    assert (v.head_text, v.tail_text, v.text) == ("Karl Marx", "New York", "Karl Marx was born in New York .")
    y = RelationInstance("r/2", ("in", "Rome", ",", "Anna", "lived"), (3, 4), (1, 2), "r")
    w = with_mention(y, "tail", ["the", "old", "city"])
    assert (w.head_text, w.tail_text, w.uid) == ("Anna", "the old city", "r/2/swap-tail:the old city")
    with pytest.raises(ErrwiseError, match="entity_swap"):
        ErrwiseConfig(entity_swap="some")


def test_the_consolidation_round_takes_its_steps_from_the_task_budget(tiny_model_dir, tmp_path):
    """train.consolidate: after the memory update a share of the steps goes to the memory of every seen
    relation; the total per task stays replay's (equal budget). errwise mines that memory's errors first."""
    steps = {}
    for method, share in (("replay", 0.0), ("replay", 0.5), ("errwise", 0.5)):
        cfg = tiny_config(tiny_model_dir, tmp_path / f"{method}-{share}", method)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, consolidate=share, budget="replay"))
        out = run(cfg)
        lines = read_jsonl(out / "metrics.jsonl")
        steps[method, share] = [line["train_steps"] for line in lines]
        if share:
            rounds = [line["consolidation"] for line in lines]
            assert [r["steps"] for r in rounds] == [round(0.5 * s) for s in steps["replay", 0.0]]
            once = [sum(n for k, n in r["kinds"].items() if k in ("memory", "memory-error")) for r in rounds]
            assert once == [4, 8, 12]  # 2 per relation of every seen relation, each once in the plain instruction
        else:
            assert all(line["consolidation"] is None for line in lines)
    assert steps["replay", 0.5] == steps["errwise", 0.5] == steps["replay", 0.0]
    rows = read_jsonl(tmp_path / "errwise-0.5" / "error_cases" / "task_01_consolidation.jsonl")
    assert len(rows) == 8 and {r["source"] for r in rows} == {"memory"}
    assert {r["gold"] for r in rows} == set(
        json.loads((tmp_path / "errwise-0.5" / "memory" / "task_01.json").read_text())
    )


def test_defer_memory_replays_the_memory_only_in_the_consolidation_round(tiny_model_dir, tmp_path):
    """train.defer_memory: the first round trains on the task's own data only (errwise answers no memory
    before it); the consolidation round replays every seen relation's memory, where errwise mines its errors.
    Steps per task stay replay's."""
    steps = {}
    for method, defer in (("replay", False), ("replay", True), ("errwise", True)):
        cfg = tiny_config(tiny_model_dir, tmp_path / f"{method}-{defer}", method)
        train = dataclasses.replace(cfg.train, consolidate=0.5, budget="replay", defer_memory=defer)
        lines = read_jsonl(run(dataclasses.replace(cfg, train=train)) / "metrics.jsonl")
        steps[method, defer] = [line["train_steps"] for line in lines]
        first = [sum(n for k, n in line["train_kinds"].items() if k.startswith("memory")) for line in lines]
        again = [sum(n for k, n in line["consolidation"]["kinds"].items() if k.startswith("memory")) for line in lines]
        assert first == ([0, 0, 0] if defer else [0, 4, 8])  # 2 per relation of the earlier tasks
        assert again == [4, 8, 12]  # every seen relation's memory, each once in the plain instruction
    assert steps["replay", True] == steps["errwise", True] == steps["replay", False]
    out = tmp_path / "errwise-True"
    assert {r["source"] for r in read_jsonl(out / "error_cases" / "task_01.jsonl")} == {"train"}
    rounds = read_jsonl(out / "error_cases" / "task_01_consolidation.jsonl")
    assert {r["source"] for r in rounds} == {"memory"}
    from errwise.report import compare_table

    lines = compare_table([out]).splitlines()
    header = [c.strip() for c in next(line for line in lines if line.startswith("| Method | Task |")).split("|")]
    row = [c.strip() for c in next(line for line in lines if line.startswith("| errwise | T2 |")).split("|")]
    task2 = set(read_jsonl(out / "metrics.jsonl")[1]["relations"])  # the second task's (new) relations
    wrong = [r for r in rounds if not r["correct"]]
    to_new = sum(r["pred"] in task2 for r in wrong)
    assert row[header.index("Consolidation errors")] == f"{len(wrong)}/{len(rounds)} ({to_new} to new)"
    with pytest.raises(ErrwiseError, match="defer_memory needs train.consolidate"):
        TrainConfig(defer_memory=True, consolidate=0.0)


def test_consolidate_first_false_gives_task_1_all_its_steps(tiny_model_dir, tmp_path):
    """train.consolidate_first false: no round after task 1 (its memory is what it just trained on); the later
    tasks keep theirs, and every task its step budget."""
    cfg = tiny_config(tiny_model_dir, tmp_path / "errwise", "errwise")
    train = dataclasses.replace(cfg.train, consolidate=0.5, max_steps=4, consolidate_first=False)
    out = run(dataclasses.replace(cfg, train=train))
    lines = read_jsonl(out / "metrics.jsonl")
    assert lines[0]["consolidation"] is None and lines[0]["train_steps"] == 4
    assert [line["consolidation"]["steps"] for line in lines[1:]] == [2, 2]
    assert [line["train_steps"] for line in lines[1:]] == [4, 4]  # both rounds
    assert not (out / "error_cases" / "task_00_consolidation.jsonl").exists()
    assert (out / "error_cases" / "task_01_consolidation.jsonl").is_file()
    # without a round (replay's default) the switch is kept at its default, so configs and groups stay equal
    assert dataclasses.replace(
        tiny_config(tiny_model_dir, tmp_path / "r", "replay"),
        train=dataclasses.replace(cfg.train, consolidate=0.0, defer_memory=False, consolidate_first=False),
    ).train.consolidate_first


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_takes_a_consolidation_round(tiny_model_dir, tmp_path, method):
    cfg = tiny_config(tiny_model_dir, tmp_path / method, method)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, consolidate=0.5, max_steps=4))
    lines = read_jsonl(run(cfg) / "metrics.jsonl")
    uses_memory = method != "finetune"
    assert [line["consolidation"]["steps"] for line in lines] == [2 * uses_memory] * 3
    assert [line["train_steps"] for line in lines] == [4 if uses_memory else 2] * 3


def test_resume_after_a_kill_gives_the_same_numbers(tiny_model_dir, tmp_path):
    """Kill a real `errwise run` process after its first task; resuming it ends where a full run ends."""
    full = run(tiny_config(tiny_model_dir, tmp_path / "full"))
    killed = tmp_path / "killed"
    args = [
        sys.executable,
        "-m",
        "errwise.cli",
        "run",
        "--output_dir",
        str(killed),
        "--model.name",
        str(tiny_model_dir),
        "--data.num_tasks",
        "3",
        "--data.relations_per_task",
        "2",
        "--data.train_size",
        "8",
        "--data.test_size",
        "4",
        "--model.lora_r",
        "4",
        "--model.lora_alpha",
        "8",
        "--train.epochs",
        "1",
        "--train.batch_size",
        "4",
        "--train.lr",
        "1e-3",
        "--method.memory_per_relation",
        "2",
        "--eval.batch_size",
        "8",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import time

    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "metrics.jsonl").exists():
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    done = read_jsonl(killed / "metrics.jsonl")
    assert 1 <= len(done) < 3, "the process should be killed mid-run"
    assert main(["run", str(killed)]) == 0
    a, b = read_jsonl(full / "metrics.jsonl"), read_jsonl(killed / "metrics.jsonl")
    assert [r["accuracy_row"] for r in a] == [r["accuracy_row"] for r in b]
    assert [round(r["train_loss"], 5) for r in a] == [round(r["train_loss"], 5) for r in b]
    # Each start of the run recorded its environment: the fresh start from task 0, the resume from where it was.
    starts = read_jsonl(killed / "environment.jsonl")
    assert [e["from_task"] for e in starts] == [0, len(done)]
    assert starts[0]["transformers"] == transformers.__version__ and starts[0]["torch"] == torch.__version__
    weights = hashlib.sha256(b"model.safetensors\0" + (tiny_model_dir / "model.safetensors").read_bytes())
    assert starts[0]["model_weights"] == weights.hexdigest()[:16]
    assert starts[0]["tokenizer"] is not None and starts[0]["converted_by"] is None  # a folder, not a GGUF
    assert starts[0]["dtype"] == "float32" and starts[0]["threads"] >= 1


def test_eval_split_val_scores_the_validation_instances(tiny_model_dir, tmp_path):
    """Hyperparameters can be chosen without the test set: `eval.split val` predicts each seen task's val."""
    cfg = tiny_config(tiny_model_dir, tmp_path / "val")
    data = dataclasses.replace(cfg.data, num_tasks=2, val_size=3, max_val=2)
    cfg = dataclasses.replace(cfg, data=data, eval=dataclasses.replace(cfg.eval, split="val"))
    out = run(cfg)
    stream = make_stream(cfg)
    for i in range(2):
        uids = [p["uid"] for p in read_jsonl(out / "predictions" / f"task_{i:02d}.jsonl")]
        assert uids == [x.uid for t in stream.tasks[: i + 1] for x in t.val]
        assert len(uids) == 2 * 2 * (i + 1)  # max_val 2 per relation, 2 relations per task
        assert not set(uids) & {x.uid for t in stream.tasks for x in (*t.train, *t.test)}
    no_val = dataclasses.replace(cfg, data=dataclasses.replace(data, val_size=0), output_dir=str(tmp_path / "x"))
    with pytest.raises(ErrwiseError, match="data.val_size"):
        run(no_val)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope.yaml" in err and len(err.strip().splitlines()) == 1
    assert main(["run", "--method.name", "magic", "--output_dir", str(tmp_path / "x")]) == 2
    assert "unknown method" in capsys.readouterr().err


def test_a_finished_run_folder_is_never_overwritten_by_another_config(tiny_model_dir, tmp_path):
    from dataclasses import replace

    from errwise.errors import ErrwiseError

    cfg = tiny_config(tiny_model_dir, tmp_path / "r")
    run(cfg)
    before = (tmp_path / "r" / "metrics.jsonl").read_text()
    with pytest.raises(ErrwiseError, match="another config"):
        run(replace(cfg, train=replace(cfg.train, lr=5e-4)))
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == before


def test_report_to_tensorboard_logs_the_loss_per_step_and_the_accuracies_per_task(tiny_model_dir, tmp_path):
    pytest.importorskip("tensorboard", reason="the optional extra: pip install -e '.[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = dataclasses.replace(
        tiny_config(tiny_model_dir, tmp_path / "tb", "replay"),
        train=TrainConfig(epochs=1, batch_size=4, lr=1e-3, consolidate=0.25),
        report_to="tensorboard",
    )
    out = run(cfg)
    lines = read_jsonl(out / "metrics.jsonl")
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    train_loss = events.Scalars("train/loss") + events.Scalars("consolidate/loss")
    assert sorted(e.step for e in train_loss) == list(range(1, sum(line["train_steps"] for line in lines) + 1))
    seen = events.Scalars("eval/seen_accuracy")
    assert [e.step for e in seen] == [1, 2, 3]
    assert [e.value for e in seen] == pytest.approx([line["seen_accuracy"] for line in lines])
    first_task = events.Scalars("eval/accuracy_task_1")
    assert [e.value for e in first_task] == pytest.approx([line["accuracy_row"][0] for line in lines])


def test_report_to_tensorboard_without_the_package_is_a_one_line_error(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    cfg = dataclasses.replace(tiny_config(tiny_model_dir, tmp_path / "no-tb"), report_to="tensorboard")
    with pytest.raises(ErrwiseError, match=r"pip install -e '\.\[tensorboard\]'"):
        run(cfg)
    assert not (tmp_path / "no-tb" / "config.yaml").exists()  # nothing written
    with pytest.raises(ErrwiseError, match="report_to"):
        dataclasses.replace(cfg, report_to="wandb")
