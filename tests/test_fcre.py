"""Few-shot CRE (FCRE): the published orders, the tasks and counts their code computes from the files, the reader's
errors, the validation split, the intermediate subsample, the presets, and a TACRED-shaped run end to end.

tests/fixtures/fcre_tacred/ is a TACRED-shaped FCRE dataset in SCKD's layout (41 relations, rel_index.npy, an empty
relation_description.txt, CFRLdata_10_100_10_5/ with 6 relations in cluster 7 and 5 in each other), with invented
sentences and tiny counts: 3 training instances per task-1 relation, 2 per later one, 1-3 test instances each.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, SHARED, tiny_run
from errwise.cli import main
from errwise.config import DataConfig, EvalConfig, RunConfig, from_dict, load_yaml, to_dict
from errwise.data.formats import load_fcre
from errwise.data.stream import fcre_order, fcre_stream, subsample
from errwise.errors import ErrwiseError
from errwise.report import group_runs, load_run
from errwise.run import eval_instances, make_stream, resume_config, run

FCRE = SHARED / "fcre" / "fewrel"
TACRED = Path(__file__).resolve().parent / "fixtures" / "fcre_tacred"

# ../shared/data/fcre/README.md: the order of each seed, as published.
README_ORDERS = {
    100: [7, 0, 6, 2, 5, 1, 4, 3],
    200: [7, 6, 5, 2, 1, 0, 3, 4],
    300: [7, 3, 2, 5, 0, 6, 4, 1],
    400: [7, 3, 1, 6, 0, 5, 2, 4],
    500: [7, 0, 2, 1, 5, 4, 3, 6],
    600: [7, 1, 3, 6, 4, 0, 2, 5],
}


def fewrel_folder() -> Path:
    if not (FCRE / "relation_name.txt").is_file():
        pytest.skip(f"{FCRE} not found (shared data folder absent)")
    return FCRE


def stream(corpus, order=0, **kw):
    caps = dict(num_tasks=None, val_size=0, max_train=None, max_val=None, max_test=None)
    return fcre_stream(corpus, order=order, seed=100 * (order + 1), **{**caps, **kw})


# ------------------------------------------------------------------------------------------------ orders


def test_the_six_orders_are_the_readme_literals():
    assert {seed: fcre_order(seed) for seed in README_ORDERS} == README_ORDERS


def test_fcre_order_draws_what_the_global_seed_draws_and_leaves_it_alone():
    state = random.getstate()
    try:
        for seed in README_ORDERS:  # SCKD's sampler, as written
            random.seed(seed)
            s = list(range(7))
            random.shuffle(s)
            assert fcre_order(seed) == [7, *np.argsort(s).tolist()]
        random.seed(7)
        expected = random.random()
        random.seed(7)
        fcre_order(300)
        assert random.random() == expected
    finally:
        random.setstate(state)


# --------------------------------------------------------------------- the published code, from the files


def published_tasks(folder: Path, shot: Path, seed: int, n_relations: int) -> list[tuple[list[int], Counter, Counter]]:
    """SCKD's sampler (sampler.py), reimplemented from its code: per task, the relation ids and the per-relation
    training and test counts."""
    rel_index = np.load(folder / "rel_index.npy")
    labels = np.load(shot / "rel_cluster_label_0.npy")
    cluster_to_labels: dict[int, list[int]] = {}
    for index, i in enumerate(rel_index):
        cluster_to_labels.setdefault(labels[index], []).append(i - 1)
    state = random.getstate()
    random.seed(seed)
    shuffle_index = list(range(7))
    random.shuffle(shuffle_index)
    random.setstate(state)
    shuffle_index = np.insert(np.argsort(shuffle_index), 0, 7)

    def read(file: Path) -> list[list[str]]:
        data: list[list[str]] = [[] for _ in range(n_relations)]
        for line in file.read_text(encoding="utf-8").splitlines():
            items = line.strip().split("\t")
            if len(items[0]) > 0:
                data[int(items[0]) - 1].append(items[2])
        return data

    train, test = read(shot / "train_0.txt"), read(shot / "test_0.txt")
    out = []
    for c in shuffle_index:
        ids = cluster_to_labels[c]
        out.append(
            (
                [i + 1 for i in ids],
                Counter({str(i + 1): len(train[i]) for i in ids}),
                Counter({str(i + 1): len(test[i]) for i in ids}),
            )
        )
    return out


@pytest.mark.parametrize("shots", [5, 10])
def test_every_seed_gives_the_tasks_and_counts_of_the_published_code(shots):
    folder = fewrel_folder()
    corpus = load_fcre(folder, shots)
    assert corpus.name == f"fewrel-{shots}shot" and len(corpus.relations) == 80
    for order, seed in enumerate(README_ORDERS):
        s = stream(corpus, order)
        assert s.name == f"fewrel-{shots}shot-seed{seed}" and s.order == order
        expected = published_tasks(folder, folder / f"{shots}shot", seed, 80)
        assert len(s.tasks) == len(expected) == 8
        for task, (ids, train, test) in zip(s.tasks, expected):
            assert task.relations == tuple(str(i) for i in ids)
            assert Counter(x.relation for x in task.train) == train
            assert Counter(x.relation for x in task.test) == test
            assert not task.val
            # the protocol's counts: 100 per relation in task 1, K after; 100 test instances per relation
            assert set(train.values()) == ({100} if task.index == 0 else {shots})
            assert set(test.values()) == {100}
        # every line of both files, each once
        assert sorted(x.uid for t in s.tasks for x in t.train) == sorted(x.uid for x in corpus.train)
        assert sorted(x.uid for t in s.tasks for x in t.test) == sorted(x.uid for x in corpus.test)
        assert len(corpus.train) == 10 * 100 + 70 * shots and len(corpus.test) == 8000


def test_some_task_relation_sets_by_hand():
    folder = fewrel_folder()
    five, ten = load_fcre(folder, 5), load_fcre(folder, 10)
    task1 = {"6", "12", "14", "17", "21", "25", "49", "64", "65", "78"}  # cluster 7 in both clusterings
    s = stream(five, order=0)  # seed 100: clusters 7, 0, 6, 2, 5, 1, 4, 3
    assert set(s.tasks[0].relations) == task1
    assert set(s.tasks[1].relations) == {"2", "3", "4", "13", "24", "29", "42", "56", "61", "80"}
    assert set(s.tasks[7].relations) == {"7", "23", "40", "45", "54", "55", "57", "71", "72", "75"}
    s = stream(ten, order=5)  # seed 600: clusters 7, 1, 3, 6, 4, 0, 2, 5
    assert set(s.tasks[0].relations) == task1
    assert set(s.tasks[1].relations) == {"3", "38", "41", "47", "50", "53", "59", "63", "68", "74"}
    assert set(s.tasks[7].relations) == {"15", "20", "24", "32", "33", "54", "60", "70", "71", "72"}


def test_the_reader_keeps_names_descriptions_sentences_and_spans():
    corpus = load_fcre(fewrel_folder(), 5)
    r = corpus.relation("1")
    assert r.name == "place served by transport hub" and r.description.startswith("territorial entity or entities")
    x = corpus.train[0]  # 25 | ... | paul sérusier | 8 9 | les nabis | 21 22 | ...
    assert (x.uid, x.relation, x.head, x.tail) == ("train_0:1", "25", (8, 10), (21, 23))
    assert (x.head_text, x.tail_text) == ("paul sérusier", "les nabis")
    # every span reads as the file's head and tail text fields (which the reader does not use)
    for xs, path in ((corpus.train, FCRE / "5shot" / "train_0.txt"), (corpus.test, FCRE / "5shot" / "test_0.txt")):
        fields = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]
        assert [(x.head_text, x.tail_text) for x in xs] == [(f[3], f[5]) for f in fields]


def test_the_tacred_fixture_has_the_tacred_shape():
    corpus = load_fcre(TACRED, 5)
    assert corpus.name == "fcre_tacred-5shot" and len(corpus.relations) == 41
    assert all(r.description == "" for r in corpus.relations)  # SCKD's TACRED description file is empty
    assert [len(c) for c in corpus.clusters] == [5] * 7 + [6]
    s = stream(corpus, order=2)
    expected = published_tasks(TACRED, TACRED / "CFRLdata_10_100_10_5", 300, 41)
    assert [t.relations for t in s.tasks] == [tuple(str(i) for i in ids) for ids, _, _ in expected]
    assert [Counter(x.relation for x in t.train) for t in s.tasks] == [train for _, train, _ in expected]
    assert [Counter(x.relation for x in t.test) for t in s.tasks] == [test for _, _, test in expected]


# ------------------------------------------------------------------------------------------ reader errors


def damaged(tmp_path: Path, line_no: int, edit) -> Path:
    """The TACRED fixture with line `line_no` of train_0.txt replaced by edit(its fields)."""
    folder = shutil.copytree(TACRED, tmp_path / "tacred")
    path = folder / "CFRLdata_10_100_10_5" / "train_0.txt"
    lines = path.read_text().splitlines()
    lines[line_no - 1] = "\t".join(edit(lines[line_no - 1].split("\t")))
    path.write_text("\n".join(lines) + "\n")
    return folder


def _set(i, value):
    return lambda f: [*f[:i], value, *f[i + 1 :]]


BAD_LINES = {
    "too few fields": (lambda f: f[:8], "8 tab-separated fields, expected 9"),
    "too many fields": (lambda f: [*f, "x"], "10 tab-separated fields, expected 9"),
    "relation id 0": (_set(0, "0"), "relation id '0' is not one of 1..41"),
    "relation id past the names": (_set(0, "42"), "relation id '42' is not one of 1..41"),
    "relation id not a number": (_set(0, "P17"), "relation id 'P17' is not one of 1..41"),
    "head position out of range": (_set(4, "3 99"), "head position 99 is outside the sentence"),
    "tail position not a number": (_set(6, "2 x"), "tail positions '2 x' are not 0-based token numbers"),
    "no tail position": (_set(6, ""), "tail positions '' are not 0-based token numbers"),
    "head and tail the same": (lambda f: _set(4, f[6])(f), "head and tail are the same span"),
}


@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_a_damaged_line_is_one_line_naming_the_file_and_line(tmp_path, case):
    edit, expected = BAD_LINES[case]
    folder = damaged(tmp_path, 7, edit)
    with pytest.raises(ErrwiseError) as e:
        load_fcre(folder, 5)
    message = str(e.value)
    path = folder / "CFRLdata_10_100_10_5" / "train_0.txt"
    assert message.startswith(f"{path}: line 7: ") and expected in message and "\n" not in message


def test_non_contiguous_positions_span_first_to_last(tmp_path):
    """The files hold none; SCKD's code marks a mention from its first to its last position, so do we."""
    folder = damaged(tmp_path, 1, lambda f: [f[0], f[1], "a b c d e f g", "a c", "0 2", "f", "5", "Q1", "Q2"])
    x = load_fcre(folder, 5).train[0]
    assert (x.head, x.tail, x.head_text) == ((0, 3), (5, 6), "a b c")


def test_missing_and_damaged_folder_files(tmp_path):
    with pytest.raises(ErrwiseError, match="no 10shot/ \\(nor CFRLdata_10_100_10_10/\\)"):
        load_fcre(TACRED, 10)
    with pytest.raises(ErrwiseError, match="relation_name.txt: cannot read"):
        load_fcre(tmp_path, 5)
    with pytest.raises(ErrwiseError, match="pass their dataset folder .* with --data.path"):
        load_fcre(None, 5)
    folder = shutil.copytree(TACRED, tmp_path / "t")
    np.save(folder / "rel_index.npy", np.arange(41))  # 0-based: not the relation ids
    with pytest.raises(ErrwiseError, match=r"rel_index.npy: whole file: not the relation ids 1..41"):
        load_fcre(folder, 5)
    (folder / "relation_description.txt").write_text("only one line\n")
    with pytest.raises(ErrwiseError, match=r"relation_description.txt: whole file: 1 lines for 41 relation names"):
        load_fcre(folder, 5)


# -------------------------------------------------------------------- validation split, subsample, config


def test_val_size_holds_out_the_last_training_instances_and_zero_is_the_protocol():
    corpus = load_fcre(TACRED, 5)
    full, held = stream(corpus, order=1), stream(corpus, order=1, val_size=1)
    for a, b in zip(full.tasks, held.tasks):
        assert a.test == b.test and a.relations == b.relations
        for rel in a.relations:
            xs = [x for x in a.train if x.relation == rel]
            assert [x for x in b.train if x.relation == rel] == xs[:-1]
            assert [x for x in b.val if x.relation == rel] == xs[-1:]
    assert {x.uid for x in held.tasks[0].val} == {x.uid for x in stream(corpus, order=4, val_size=1).tasks[0].val}
    with pytest.raises(ErrwiseError, match="has 2 training instance\\(s\\); data.val_size 2 must leave at least one"):
        stream(corpus, order=0, val_size=2)
    with pytest.raises(ErrwiseError, match="has 8 tasks .* asked for 9"):
        stream(corpus, num_tasks=9)


def test_intermediate_subsample_is_fixed_nested_and_per_relation():
    s = stream(load_fcre(TACRED, 5), order=0)
    xs = eval_instances(s, 7, "test")
    one, two = subsample(xs, 1), subsample(xs, 2)
    assert one == subsample(list(xs), 1) and set(one) <= set(two)
    assert Counter(x.relation for x in one) == Counter({r: 1 for r in s.seen_relations(7)})
    assert all(min(2, n) == Counter(x.relation for x in two)[r] for r, n in Counter(x.relation for x in xs).items())
    assert [x for x in xs if x in set(two)] == two  # kept in their order
    assert eval_instances(s, 7, "test", 2) == two


def fcre_config(**data) -> RunConfig:
    return RunConfig(data=DataConfig(**{"dataset": "tacred", "path": str(TACRED), "split": "fcre", "shots": 5, **data}))


def test_config_checks_and_the_seed_in_the_saved_config():
    cfg = fcre_config(order=3)
    assert cfg.data.order_seed == 400
    assert to_dict(cfg)["data"]["order_seed"] == 400 and from_dict(yaml.safe_load(yaml.safe_dump(to_dict(cfg)))) == cfg
    assert make_stream(cfg).name == "fcre_tacred-5shot-seed400"
    for bad, message in [
        (dict(dataset="builtin"), "data.split fcre reads the FCRE files of fewrel or tacred"),
        (dict(shots=None), "data.split fcre needs data.shots"),
        (dict(split_seed=3), "data.split_seed has no use with split fcre"),
        (dict(order=3, order_seed=100), "data.order_seed 100 is not the seed of data.order 3"),
    ]:
        with pytest.raises(ErrwiseError, match=message):
            fcre_config(**bad)
    with pytest.raises(ErrwiseError, match="data.shots is for split fcre"):
        DataConfig(shots=5)
    with pytest.raises(ErrwiseError, match="data.order_seed is for split fcre"):
        DataConfig(order_seed=100)
    with pytest.raises(ErrwiseError, match="eval.intermediate_test must be > 0"):
        EvalConfig(intermediate_test=0)


@pytest.mark.parametrize("dataset", ["fewrel", "tacred"])
@pytest.mark.parametrize("shots", [5, 10])
def test_presets(dataset, shots):
    path = REPO / "configs" / f"fcre_{dataset}_{shots}shot.yaml"
    cfg = from_dict(load_yaml(path), source=str(path))
    d = cfg.data
    assert (d.dataset, d.split, d.shots, d.val_size, d.order_seed) == (dataset, "fcre", shots, 0, 100)
    assert (cfg.method.memory_per_relation, cfg.method.memory_selection) == (1, "kmeans")
    assert cfg.eval.intermediate_test is None  # the published protocol evaluates every task on the full test set


# ------------------------------------------------------------------------------------------- end to end


def test_tacred_preset_runs_end_to_end_on_tacred_files(tiny_model_dir, tmp_path, capsys):
    """configs/fcre_tacred_5shot.yaml with --data.path alone pointing at TACRED-shaped files (SCKD's layout); the
    overrides only make it seconds: the tiny model, one step per task, tasks 1-7 on 1 test instance per relation."""
    out = tmp_path / "run"
    args = ["run", str(REPO / "configs" / "fcre_tacred_5shot.yaml"), "--data.path", str(TACRED)]
    args += ["--model.name", str(tiny_model_dir), "--model.lora_r", "4", "--model.lora_alpha", "8"]
    args += ["--train.max_steps", "1", "--eval.intermediate_test", "1", "--eval.batch_size", "64"]
    args += ["--data.order", "1", "--output_dir", str(out)]
    assert main(args) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())["data"]
    assert (saved["split"], saved["order"], saved["order_seed"], saved["shots"]) == ("fcre", 1, 200, 5)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    expected = published_tasks(TACRED, TACRED / "CFRLdata_10_100_10_5", 200, 41)
    assert [line["relations"] for line in lines] == [[str(i) for i in ids] for ids, _, _ in expected]
    seen = 0
    for i, line in enumerate(lines):
        seen += len(line["relations"])
        last = i == len(lines) - 1
        assert line["eval_subsample"] == (None if last else 1)
        assert line["n_test"] == (sum(sum(test.values()) for *_, test in expected) if last else seen)
        assert len((out / "predictions" / f"task_{i:02d}.jsonl").read_text().splitlines()) == line["n_test"]
    memory = json.loads((out / "memory" / "task_07.json").read_text())
    assert len(memory) == 41 and all(len(v) == 1 for v in memory.values())
    assert main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "tacred, few-shot protocol (FCRE), 5-shot" in report
    note = "fixed subsample of 1 test instances per relation (`eval.intermediate_test`)"
    assert note in report
    capsys.readouterr()
    assert main(["compare", str(out)]) == 0
    assert note in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- start_from


def _tiny_fcre_args(tiny_model_dir, out, order, method="replay"):
    args = ["run", str(REPO / "configs" / "fcre_tacred_5shot.yaml"), "--data.path", str(TACRED)]
    args += ["--model.name", str(tiny_model_dir), "--model.lora_r", "4", "--model.lora_alpha", "8"]
    args += ["--train.max_steps", "2", "--eval.intermediate_test", "1", "--eval.batch_size", "64"]
    return [
        *args,
        "--data.num_tasks",
        "3",
        "--method.name",
        method,
        "--data.order",
        str(order),
        "--output_dir",
        str(out),
    ]


def _tiny_fcre(tiny_model_dir, out, order, method="replay", *extra):
    assert main([*_tiny_fcre_args(tiny_model_dir, out, order, method), *extra]) == 0
    return out


def _files(run: Path, sub: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run / sub).glob("*"))} if (run / sub).is_dir() else {}


def _metrics(run: Path) -> list[dict]:
    return [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]


def _computed(run: Path) -> list[dict]:
    """The metrics lines without what differs between a copied task and the same task computed (timings, source)."""
    return [{k: v for k, v in x.items() if k not in ("seconds", "phase_seconds", "copied_from")} for x in _metrics(run)]


@pytest.mark.parametrize("method", ["replay", "errwise"])
def test_start_from_copies_the_shared_first_task_and_ends_as_a_full_run(tiny_model_dir, tmp_path, method):
    """Order 1 started from order 0's run equals order 1 run from scratch: task 1 (cluster 7 for every seed) is
    copied, tasks 2-3 trained; the same metrics, predictions, memory, error cases and final adapter."""
    source = _tiny_fcre(tiny_model_dir, tmp_path / "order0", 0, method)
    full = _tiny_fcre(tiny_model_dir, tmp_path / "order1", 1, method)
    started = _tiny_fcre(tiny_model_dir, tmp_path / "started", 1, method, "--start_from", str(source))
    assert [line.get("copied_from") for line in _metrics(started)] == [str(source), None, None]
    assert _computed(started) == _computed(full)
    assert _computed(started)[0] == _computed(source)[0] and _computed(full)[1] != _computed(source)[1]
    for sub in ("predictions", "memory", "error_cases"):
        assert _files(started, sub) == _files(full, sub)
    assert (method == "errwise") == bool(_files(started, "error_cases"))
    assert _files(started / "checkpoints", "task_02") == _files(full / "checkpoints", "task_02")
    env = [json.loads(s) for s in (started / "environment.jsonl").read_text().splitlines()]
    assert [(e["from_task"], e.get("copied_from")) for e in env] == [(0, str(source)), (1, None)]
    saved = yaml.safe_load((started / "config.yaml").read_text())
    assert saved["start_from"] == str(source)
    assert len(group_runs([load_run(source), load_run(started)])) == 1  # start_from does not split a group
    assert main(["run", str(started)]) == 0  # a finished run resumed: nothing copied or trained again
    assert len((started / "metrics.jsonl").read_text().splitlines()) == 3


def test_a_run_stopped_right_after_its_copied_task_can_be_reported(tiny_model_dir, tmp_path, monkeypatch):
    """Stopped after --start_from copied task 1 and before its own task 2: the folder is a readable (incomplete)
    run, with the copied task's accuracy row, and `errwise run` resumes it to the end."""
    import errwise.run as run_module
    from errwise.report import load_run

    source = _tiny_fcre(tiny_model_dir, tmp_path / "order0", 0)

    def stop(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "load_run_model", stop)
    args = [*_tiny_fcre_args(tiny_model_dir, tmp_path / "started", 1), "--start_from", str(source)]
    assert main(args) == 130
    started = load_run(tmp_path / "started")
    assert started.status == "incomplete (1/3 tasks)" and started.matrix == load_run(source).matrix[:1]
    monkeypatch.undo()
    assert main(["run", str(tmp_path / "started")]) == 0 and load_run(tmp_path / "started").complete


REPDEFER = ["--train.consolidate", "0.25", "--train.defer_memory", "true"]


@pytest.mark.parametrize(
    "target", [["finetune"], ["joint"], ["replay", *REPDEFER]], ids=["finetune", "joint", "repdefer"]
)
def test_start_from_another_method_copies_only_the_first_task_which_is_the_same(tiny_model_dir, tmp_path, target):
    """finetune, joint and replay on errwise's schedule (no round after task 1) started from a replay run of another
    order equal the same run from scratch: their first task is replay's computation; tasks 2-3 are their own."""
    steps = ["--train.max_steps", "4"]  # 4 steps: the schedule's round takes one of them from task 2 on
    source = _tiny_fcre(tiny_model_dir, tmp_path / "replay0", 0, "replay", *steps)
    method, *extra = target
    full = _tiny_fcre(tiny_model_dir, tmp_path / "full", 1, method, *steps, *extra)
    started = _tiny_fcre(tiny_model_dir, tmp_path / "started", 1, method, *steps, *extra, "--start_from", str(source))
    assert [line.get("copied_from") for line in _metrics(started)] == [str(source), None, None]
    assert _computed(started) == _computed(full)
    for sub in ("predictions", "memory"):
        assert _files(started, sub) == _files(full, sub)
    assert _files(started / "checkpoints", "task_02") == _files(full / "checkpoints", "task_02")
    # the claim itself, from scratch: the method's first task is replay's, bit for bit, and its later ones are not
    replay1 = _tiny_fcre(tiny_model_dir, tmp_path / "replay1", 1, "replay", *steps)
    assert _files(full / "checkpoints", "task_00") == _files(replay1 / "checkpoints", "task_00")
    assert _files(full / "checkpoints", "task_01") != _files(replay1 / "checkpoints", "task_01")


def test_start_from_replay_copies_task_1_into_the_fields_joint_whose_budget_differs_from_task_2_on(
    tiny_model_dir, tmp_path
):
    """joint at its own budget (every seen instance, the field's upper bound) started from replay at replay's budget
    equals the same joint run from scratch: at task 1 both budgets count the task's instances alone (steps from the
    budget, not max_steps); from task 2 on joint's own budget is the larger one."""
    budget = ["--train.max_steps", "null"]  # steps from train.budget
    source = _tiny_fcre(tiny_model_dir, tmp_path / "replay0", 0, "replay", *budget)
    own = [*budget, "--train.budget", "own"]
    full = _tiny_fcre(tiny_model_dir, tmp_path / "full", 1, "joint", *own)
    started = _tiny_fcre(tiny_model_dir, tmp_path / "started", 1, "joint", *own, "--start_from", str(source))
    assert [line.get("copied_from") for line in _metrics(started)] == [str(source), None, None]
    assert _computed(started) == _computed(full)
    assert _files(full / "checkpoints", "task_00") == _files(source / "checkpoints", "task_00")
    assert _files(started / "checkpoints", "task_02") == _files(full / "checkpoints", "task_02")
    replay_steps = [
        x["train_steps"] for x in _metrics(_tiny_fcre(tiny_model_dir, tmp_path / "replay1", 1, "replay", *budget))
    ]
    joint_steps = [x["train_steps"] for x in _metrics(full)]
    assert joint_steps[0] == replay_steps[0] and joint_steps[2] > replay_steps[2]


def test_start_from_another_method_refuses_errwise_and_a_round_after_task_1(tiny_model_dir, tmp_path, capsys):
    source = _tiny_fcre(tiny_model_dir, tmp_path / "replay0", 0, "replay")
    first_round = ["--train.consolidate", "0.5", "--train.consolidate_first", "true"]
    rounded = _tiny_fcre(tiny_model_dir, tmp_path / "rounded0", 0, "replay", *first_round)
    capsys.readouterr()
    cases = [
        ("errwise", [], source, "was run with method.name = 'replay', this run has 'errwise'"),
        ("finetune", [], rounded, "was run with method.name = 'replay', this run has 'finetune'"),
        ("replay", first_round, source, "was run with train.consolidate = 0.0, this run has 0.5"),
    ]
    for i, (method, extra, src, message) in enumerate(cases):
        out = tmp_path / f"refused{i}"
        assert main([*_tiny_fcre_args(tiny_model_dir, out, 1, method), *extra, "--start_from", str(src)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not (out / "metrics.jsonl").exists()


def test_start_from_refuses_another_config_method_or_first_task_and_an_empty_run(tiny_model_dir, tmp_path, capsys):
    source = _tiny_fcre(tiny_model_dir, tmp_path / "order0", 0)
    capsys.readouterr()
    cases = [
        (["--start_from", str(source), "--train.lr", "0.01"], "was run with train.lr = 0.001, this run has 0.01"),
        (["--start_from", str(source), "--data.val_size", "1"], "was run with data.val_size = 0, this run has 1"),
        (["--start_from", str(tmp_path / "nothing")], "holds no completed task"),
        (["--start_from", str(source), "--method.name", "lessons"], "copies tasks of finetune, replay, joint, errwise"),
    ]
    for i, (extra, message) in enumerate(cases):
        out = tmp_path / f"refused{i}"
        assert main([*_tiny_fcre_args(tiny_model_dir, out, 1), *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not (out / "metrics.jsonl").exists()
    # the standard split: order 1 shuffles other relations into task 1 than order 0
    builtin = tiny_run(tiny_model_dir, tmp_path / "builtin0")
    cfg = resume_config(builtin)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, order=1), start_from=str(builtin))
    with pytest.raises(ErrwiseError, match="its first task is not this run's"):
        run(cfg, tmp_path / "builtin1")
    assert not (tmp_path / "builtin1").exists()
