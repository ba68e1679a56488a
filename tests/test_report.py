"""The report from hand-made run folders (the layout run.py writes), with numbers worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from errwise.errors import ErrwiseError
from errwise.report import compare_table, group_runs, load_run, shell_runs, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAMES = {f"P{i}": f"rel {'abcdef'[i]}" for i in range(6)}
TASKS = {  # relation ids per task, for task orders 0 and 1
    0: [["P0", "P1"], ["P2", "P3"], ["P4", "P5"]],
    1: [["P2", "P5"], ["P0", "P3"], ["P1", "P4"]],
}


def fake_run(
    root: Path, name: str, method: str, order: int, matrix: list[list[float]], wall: float, epochs=2.0
) -> Path:
    """A run folder with `matrix` as its accuracy rows; complete when it has all 3 rows.

    Each task has 10 test instances; after task i, the wrong ones of task j have gold tasks[j][0] and are
    predicted as the newest relation tasks[i][0] (tasks[i][1] when that is the gold): a recency bias.
    """
    path = root / name
    (path / "predictions").mkdir(parents=True)
    tasks = TASKS[order]
    config = {
        "data": {"dataset": "builtin", "order": order, "num_tasks": 3, "relations_per_task": 2},
        "model": {"name": "tiny-llama"},
        "train": {"epochs": epochs, "seed": 0},
        "method": {"name": method},
        "eval": {"batch_size": 8},
        "output_dir": str(path),
    }
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    relations = {r: {"name": n, "description": f"{n}, described"} for r, n in NAMES.items()}
    (path / "relations.json").write_text(json.dumps(relations))
    (path / "accuracy_matrix.json").write_text(json.dumps({"tasks": tasks, "matrix": matrix}))
    lines = []
    for i, row in enumerate(matrix):
        preds = []
        for j, acc in enumerate(row):
            for k in range(10):
                gold = tasks[j][k % 2] if k < round(10 * acc) else tasks[j][0]
                wrong = tasks[i][0] if gold != tasks[i][0] else tasks[i][1]
                p = gold if k < round(10 * acc) else wrong
                preds.append({"uid": f"{j}-{k}", "task": j, "gold": gold, "pred": p, "correct": p == gold})
        (path / "predictions" / f"task_{i:02d}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in preds))
        seconds = wall / 3
        phases = {"begin": 0.0, "train": 0.8 * seconds, "evaluate": 0.2 * seconds, "end": 0.0}
        lines.append(
            {
                "task": i,
                "relations": tasks[i],
                "seen_accuracy": sum(row) / len(row),  # equal test counts: micro = mean of the row
                "accuracy_row": row,
                "n_test": 10 * (i + 1),
                "train_steps": 5,
                "train_examples": 40,
                "train_loss": 0.5,
                "seconds": seconds,
                "phase_seconds": phases,
            }
        )
    (path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    if len(matrix) == 3:
        summary = {"method": method, "order": order, "seen_accuracy": [x["seen_accuracy"] for x in lines]}
        (path / "summary.json").write_text(json.dumps({**summary, "wall_seconds": wall}))
    return path


REPLAY_0 = [[1.0], [0.8, 0.9], [0.6, 0.7, 0.8]]  # seen 1.0 0.85 0.7
REPLAY_1 = [[0.9], [0.7, 0.9], [0.5, 0.6, 0.7]]  # seen 0.9 0.8 0.6
FINETUNE_0 = [[1.0], [0.2, 1.0], [0.0, 0.1, 1.0]]  # seen 1.0 0.6 0.3667


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("fake") / "runs"
    return [
        fake_run(root, "replay-0", "replay", 0, REPLAY_0, wall=120),
        fake_run(root, "replay-1", "replay", 1, REPLAY_1, wall=180),
        fake_run(root, "finetune-0", "finetune", 0, FINETUNE_0, wall=90),
        fake_run(root, "finetune-1", "finetune", 1, [[0.9], [0.3, 1.0]], wall=60),  # 2 of 3 tasks done
        fake_run(root, "errwise-0", "errwise", 0, [[1.0], [0.7, 0.9]], wall=150),  # 2 of 3, alone
    ]


def table_rows(markdown: str, first_cell: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in markdown.splitlines()
        if line.startswith(f"| {first_cell} ")
    ]


def test_baseline_by_the_run_folders_name_stem(tmp_path):
    """Two groups of one method (replay and replay on another schedule): `--baseline repdefer` names the one whose
    folders are repdefer-<k>, and `--baseline replay` the one whose folders are replay-<k>."""
    r0 = fake_run(tmp_path, "replay-0", "replay", 0, REPLAY_0, wall=1)
    r1 = fake_run(tmp_path, "replay-1", "replay", 1, REPLAY_1, wall=1)
    d0 = fake_run(tmp_path, "repdefer-0", "replay", 0, REPLAY_0, wall=1, epochs=3.0)
    d1 = fake_run(tmp_path, "repdefer-1", "replay", 1, REPLAY_1, wall=1, epochs=3.0)
    by_stem = compare_table([r0, r1, d0, d1], baseline="repdefer")
    assert table_rows(by_stem, "replay (train.epochs=3.0)")[0][-4:-2] == ["(baseline)", ""]
    assert table_rows(by_stem, "replay (train.epochs=2.0)")[0][-4] == "+0.0±0.0"
    by_method = compare_table([r0, r1, d0, d1], baseline="replay")  # the method names both; the stem picks one
    assert table_rows(by_method, "replay (train.epochs=2.0)")[0][-4:-2] == ["(baseline)", ""]
    mixed = fake_run(tmp_path, "repdefer-2", "replay", 0, REPLAY_0, wall=1)  # a repdefer folder in the other group
    with pytest.raises(ErrwiseError, match="baseline 'repdefer' matches no group"):
        compare_table([r0, r1, d0, d1, mixed], baseline="repdefer")


def test_rows_named_by_their_run_folders_with_a_legend(tmp_path):
    """--names folders: a group whose runs share a folder name stem of their own is named by it (the legend says
    what it stands for); a group of mixed stems keeps its config label."""
    runs = [
        fake_run(tmp_path, "replay-0", "replay", 0, REPLAY_0, wall=1),
        fake_run(tmp_path, "replay-1", "replay", 1, REPLAY_1, wall=1),
        fake_run(tmp_path, "repdefer-0", "replay", 0, REPLAY_0, wall=1, epochs=3.0),
        fake_run(tmp_path, "repdefer-1", "replay", 1, REPLAY_1, wall=1, epochs=3.0),
        fake_run(tmp_path, "a", "finetune", 0, FINETUNE_0, wall=1),
        fake_run(tmp_path, "b", "finetune", 1, FINETUNE_0, wall=1),
    ]
    text = compare_table(runs, baseline="repdefer", names="folders")
    assert table_rows(text, "repdefer")[0][-4] == "(baseline)" and table_rows(text, "replay")[0][-4] == "+0.0±0.0"
    assert table_rows(text, "finetune")  # stems a and b: the method's label stays
    assert "- replay: replay (train.epochs=2.0)\n- repdefer: replay (train.epochs=3.0)" in text
    assert "| replay (train.epochs" not in text
    with pytest.raises(ErrwiseError, match="names must be config or folders"):
        compare_table(runs, names="stems")


def test_load_run_reads_the_contract(runs):
    done, partial = load_run(runs[0]), load_run(runs[3])
    assert done.complete and done.status == "complete" and done.wall_seconds == 120
    assert done.seen_accuracy == pytest.approx([1.0, 0.85, 0.7]) and done.matrix == REPLAY_0
    assert done.relations["P2"] == "rel c" and done.label == "replay" and done.tasks_total == 3
    assert not partial.complete and partial.status == "incomplete (2/3 tasks)"
    assert partial.wall_seconds is None and partial.seconds == pytest.approx(40)  # 2 tasks of 20s


def test_load_run_rejects_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(ErrwiseError, match=r"no metrics.jsonl in .*not an errwise run folder"):
        load_run(tmp_path)
    (tmp_path / "config.yaml").write_text("data: {}\n")
    with pytest.raises(ErrwiseError, match="no completed task yet"):
        load_run(tmp_path)


def test_orders_and_seeds_group_together_other_differences_name_the_group(tmp_path):
    r0 = fake_run(tmp_path, "a", "replay", 0, REPLAY_0, wall=1)
    r1 = fake_run(tmp_path, "b", "replay", 1, REPLAY_1, wall=1)
    r3 = fake_run(tmp_path, "c", "replay", 0, REPLAY_0, wall=1, epochs=3.0)
    ft = fake_run(tmp_path, "d", "finetune", 0, FINETUNE_0, wall=1)
    groups = group_runs([load_run(p) for p in (r1, r3, ft, r0)])
    assert list(groups) == ["replay (train.epochs=2.0)", "replay (train.epochs=3.0)", "finetune"]
    assert [r.path.name for r in groups["replay (train.epochs=2.0)"]] == ["a", "b"]  # sorted by order
    with pytest.raises(ErrwiseError, match="baseline 'replay' matches groups"):
        compare_table([r0, r3])
    assert "(baseline)" in compare_table([r0, r1, r3], baseline="replay (train.epochs=3.0)")
    text = write_report([r0, r3, ft], tmp_path / "report").read_text()  # two replays: no comparison section
    assert "| replay (train.epochs=3.0) |" in text and "Compared with replay" not in text
    merged = group_runs([load_run(p) for p in (r1, r3, ft)], ignore=["train.epochs"])
    assert {k: [r.path.name for r in v] for k, v in merged.items()} == {"replay": ["c", "b"], "finetune": ["d"]}
    with pytest.raises(ErrwiseError, match="--ignore train.epoch: no run's config.yaml has this key"):
        group_runs([load_run(r0)], ignore=["train.epoch"])


def test_the_command_hint_uses_a_glob_only_when_it_matches_exactly_the_runs(runs):
    root = runs[0].parent
    assert shell_runs(runs[:2]) == f"{root}/replay-*"
    assert shell_runs(runs[2:3]) == f"{root}/finetune-0"
    assert shell_runs(runs[2:4] + runs[:1]) == " ".join(str(p) for p in runs[2:4] + runs[:1])


@pytest.fixture(scope="module")
def report(runs) -> Path:
    return write_report(runs + [runs[0]], runs[0].parents[1] / "report")  # a folder passed twice counts once


def test_report_tables_by_hand(runs, report):
    path, out, text = report, report.parent, report.read_text()
    assert path.name == "report.md" and text.startswith("# errwise report")
    assert "Model: tiny-llama" in text and "Dataset: builtin" in text
    assert f"`errwise report {runs[0].parent}/* --out {out}`" in text
    # replay, orders 0 and 1 (std is the sample std: |x - y| / sqrt 2):
    #   T1 100, 90 -> 95.0±7.1; T2 85, 80 -> 82.5±3.5; T3 = Final 70, 60 -> 65.0±7.1
    #   Average (1 + .85 + .7) / 3 = .85 and (.9 + .8 + .6) / 3 = .7667 -> 80.8±5.9
    #   Forgetting: order 0 ((1.0 - .6) + (.9 - .7)) / 2 = .3, order 1 ((.9 - .5) + (.9 - .6)) / 2 = .35
    #   -> 32.5±3.5; BWT -.3 and -.35 (each task's best is its diagonal here) -> -32.5±3.5
    #   Learning (1 + .9 + .8) / 3 = .9 and (.9 + .9 + .7) / 3 = .8333 -> 86.7±4.7; wall (120 + 180) / 2 = 2m 30s
    replay = "| replay | 95.0±7.1 | 82.5±3.5 | 65.0±7.1 | 80.8±5.9 | 65.0±7.1 | 32.5±3.5 | -32.5±3.5 | 86.7±4.7 | 2 |"
    assert replay + " 2m 30s |" in text
    # finetune: the complete order 0 only (order 1 stopped after 2 tasks), so no ± :
    #   seen 1.0, .6, .3667; average .6556; forgetting ((1 - 0) + (1 - .1)) / 2 = .95; BWT -.95; learning 1.0
    assert "| finetune | 100.0 | 60.0 | 36.7 | 65.6 | 36.7 | 95.0 | -95.0 | 100.0 | 1 | 1m 30s |" in text
    # errwise has no complete run: its incomplete one is shown, so marked; forgetting 1.0 - .7 = .3; learning .95
    errwise = "| errwise — incomplete (2/3 tasks) | 100.0 | 80.0 |  | 90.0 | 80.0 | 30.0 | -30.0 | 95.0 | 1 | 1m 40s |"
    assert errwise in text
    # the per-run table lists every run, the incomplete ones marked, with a link relative to the report
    run_rows = table_rows(text, "[finetune-1](../runs/finetune-1)")
    assert run_rows[0][1:6] == ["finetune", "1", "0", "incomplete (2/3 tasks)", "90.0 65.0"]
    assert run_rows[0][-1] == "40s so far"
    assert "![Seen-relation accuracy after each task](seen_accuracy.png)" in text
    assert "![Accuracy matrix](accuracy_matrix.png)" in text
    for png in ("seen_accuracy.png", "accuracy_matrix.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC


def test_report_confusions_summed_over_runs(report):
    text = report.read_text()
    # After task 3, wrong ones are predicted as the newest relation (see fake_run):
    #   order 0, row [.6 .7 .8]: P0->P4 x4, P2->P4 x3, P4->P5 x2 (P4 is the newest, so P5)
    #   order 1, row [.5 .6 .7]: P2->P1 x5, P0->P1 x4, P1->P4 x3
    # 21 errors in 60 predictions; the tie at 4 goes to (P0, P1) before (P0, P4).
    section = text.split("### replay\n")[1].split("###")[0]
    assert "21 errors in 60 predictions after the last task (2 runs)" in section
    assert table_rows(section, "rel") == [
        ["rel c", "rel b", "5", "23.8%"],
        ["rel a", "rel b", "4", "19.0%"],
        ["rel a", "rel e", "4", "19.0%"],
        ["rel b", "rel e", "3", "14.3%"],
        ["rel c", "rel e", "3", "14.3%"],
        ["rel e", "rel f", "2", "9.5%"],
    ]


def test_compare_lists_the_most_confused_pairs_both_ways(runs):
    text = compare_table(runs).split("### Most confused pairs")[1]
    assert "Ranked by the counts of replay." in text
    header = table_rows(text, "Pair")[0]
    assert header == ["Pair", "replay", "finetune", "errwise — incomplete (2/3 tasks)"]
    # replay after task 3 (see test_report_confusions_summed_over_runs): order 0 P0->P4 x4, P2->P4 x3, P4->P5 x2;
    # order 1 P2->P1 x5, P0->P1 x4, P1->P4 x3. finetune's complete order 0, row [0 .1 1]: P0->P4 x10, P2->P4 x9
    # (its order 1 and errwise are incomplete: not counted). Ties by relation id: (P0, P1) before (P0, P4).
    assert table_rows(text, "all errors") == [["all errors", "21", "19", "0"]]
    assert table_rows(text, "rel") == [
        ["rel b ↔ rel c", "5", "0", "0"],
        ["rel a ↔ rel b", "4", "0", "0"],
        ["rel a ↔ rel e", "4", "10", "0"],
        ["rel b ↔ rel e", "3", "0", "0"],
        ["rel c ↔ rel e", "3", "9", "0"],
        ["rel e ↔ rel f", "2", "0", "0"],
    ]


def test_compare_table_pairs_runs_by_order(runs, tmp_path):
    text = compare_table(runs)
    header = table_rows(text, "Method")[0]
    cols = ["Forgetting", "Final", "Δ Final vs replay", "p (paired t)", "Paired orders", "Gap closed"]
    assert header[-6:] == cols
    assert table_rows(text, "replay")[0][-5:] == ["65.0±7.1", "(baseline)", "", "2", ""]
    # Learning accuracy, the diagonal's mean: replay order 0 (1 + .9 + .8) / 3 = .9, order 1 (.9 + .9 + .7) / 3
    # = .8333 -> 86.7±4.7; finetune's complete order 0: (1 + 1 + 1) / 3
    assert header[-7] == "Learning" and table_rows(text, "replay")[0][-7] == "86.7±4.7"
    assert table_rows(text, "finetune")[0][-7] == "100.0"
    assert table_rows(text, "finetune")[0][-5:] == ["36.7", "n/a", "n/a", "1", ""]  # one complete order
    assert table_rows(text, "errwise — incomplete (2/3 tasks)")[0][-5:] == ["80.0", "n/a", "n/a", "0", ""]
    # errwise finals .8 (order 0) and .65 (order 1) against replay's .7 and .6: d = [.1, .05],
    # t = 3 with 1 degree of freedom (Cauchy): p = 1 - 2/pi * atan(3) = 0.205
    e0 = fake_run(tmp_path, "e0", "errwise", 0, [[1.0], [0.9, 0.9], [0.8, 0.8, 0.8]], wall=1)
    e1 = fake_run(tmp_path, "e1", "errwise", 1, [[1.0], [0.8, 0.8], [0.6, 0.6, 0.75]], wall=1)
    text = compare_table([e0, e1, *runs[:2]])
    # forgetting of e0: tasks 1-2 drop 1.0 -> .8 and .9 -> .8: 15 points; e1: 1.0 -> .6 and .8 -> .6: 30 points
    assert table_rows(text, "errwise")[0][-6:] == ["22.5±10.6", "72.5±10.6", "+7.5±3.5", "0.205", "2", ""]
    without = compare_table([e0, e1])  # no replay group and none named: the table without differences
    assert table_rows(without, "errwise")[0][-4:] == ["n/a", "n/a", "0", ""]
    assert "without a `replay` group" in without
    with pytest.raises(ErrwiseError, match="baseline 'replay' matches no group; the groups are: 'errwise'"):
        compare_table([e0, e1], baseline="replay")  # named, but not there: a typo must not pass silently
    # With a joint group: the share of the joint - replay gap recovered, over the orders all three completed.
    # joint finals .9 (order 0) and .7 (order 1) against replay's .7 and .6: gap .3; errwise recovers .15: 50 %.
    j0 = fake_run(tmp_path, "j0", "joint", 0, [[1.0], [0.9, 0.9], [0.9, 0.9, 0.9]], wall=1)
    j1 = fake_run(tmp_path, "j1", "joint", 1, [[1.0], [0.8, 0.8], [0.7, 0.7, 0.7]], wall=1)
    text = compare_table([e0, e1, j0, j1, *runs[:2]])
    assert table_rows(text, "errwise")[0][-1] == "50 % (2)"
    assert table_rows(text, "joint")[0][-1] == "" and table_rows(text, "replay")[0][-1] == ""
    assert "Gap closed" in text.split("\n\n")[1]
    assert table_rows(compare_table([e0, j0, *runs[:2]]), "errwise")[0][-1] == "50 % (1)"  # order 0: .1 of .2


def test_the_error_case_table_counts_consolidation_errors_that_answer_a_new_relation(tmp_path):
    """After task 2 of order 0 (relations P2, P3 new; P0, P1 old) the memory answered again: P0 as P2 (a new
    relation displacing an old one), P1 as P0 (an old confusion), P2 right. 2 wrong of 3, 1 to a new relation."""
    run = fake_run(tmp_path, "e", "errwise", 0, REPLAY_0, wall=1)
    (run / "error_cases").mkdir()
    rows = [("P0", "P2"), ("P1", "P0"), ("P2", "P2")]
    lines = [{"uid": f"{g}/1", "source": "memory", "gold": g, "pred": p, "correct": g == p} for g, p in rows]
    (run / "error_cases" / "task_01_consolidation.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    text = compare_table([run])
    assert table_rows(text, "errwise")[1][-1] == "2/3 (1 to new)"  # [0] is the accuracy table's row
    assert "one of the task's new relations" in text


def test_compare_plots_the_groups_side_by_side(runs, tmp_path, capsys):
    from errwise.cli import main

    out = tmp_path / "figs" / "seen_accuracy.png"
    assert main(["compare", *map(str, runs), "--plot", str(out)]) == 0
    assert out.read_bytes().startswith(PNG_MAGIC)
    assert f"wrote {out}" in capsys.readouterr().out


def test_compare_names_the_environment_fields_that_differ(tmp_path):
    root = tmp_path / "runs"
    a = fake_run(root, "replay-0", "replay", 0, REPLAY_0, wall=120)
    b = fake_run(root, "replay-1", "replay", 1, REPLAY_1, wall=180)
    c = fake_run(root, "finetune-0", "finetune", 0, FINETUNE_0, wall=90)
    env = {"from_task": 0, "transformers": "5.25.0", "tokenizer": "aaaa", "dtype": "bfloat16", "threads": 1}
    for path, changes in ((a, {}), (b, {"transformers": "5.24.0", "tokenizer": "bbbb"})):
        (path / "environment.jsonl").write_text(json.dumps({**env, **changes}) + "\n")
    unrecorded = compare_table([a, c])  # one side unrecorded: said, and no field set against nothing
    assert "not recorded (runs from before errwise recorded it): finetune order 0" in unrecorded
    assert "transformers:" not in unrecorded
    out = compare_table([a, b, c])
    assert "transformers: 5.25.0 (replay order 0) | 5.24.0 (replay order 1)" in out
    assert "tokenizer: aaaa (replay order 0) | bbbb (replay order 1)" in out
    assert "not recorded (runs from before errwise recorded it): finetune order 0" in out
    assert "dtype:" not in out and "threads:" not in out  # the fields that agree are not named
    (b / "environment.jsonl").write_text(json.dumps(env) + "\n")
    assert "transformers:" not in compare_table([a, b])


def test_a_kept_record_with_gzipped_predictions_reads_the_same(runs, tmp_path):
    import gzip
    import shutil

    from errwise.report import last_predictions

    kept = tmp_path / "replay-0"
    shutil.copytree(runs[0], kept)
    last = kept / "predictions" / "task_02.jsonl"
    last.with_suffix(".jsonl.gz").write_bytes(gzip.compress(last.read_bytes()))
    last.unlink()
    assert last_predictions(load_run(kept)) == last_predictions(load_run(runs[0]))
    assert len(last_predictions(load_run(kept))) == 30
