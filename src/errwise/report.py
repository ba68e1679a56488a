"""From run folders to a report a person can read: markdown tables, two plots, the most frequent confusions.

Runs whose configs differ only in the task order, the seed and the output folder form one group, and a
group's numbers are mean ± std over its runs (CRE papers average over 5 task orders). Statistics use the
complete runs of a group; a group with none shows its incomplete runs, marked "incomplete (k/n tasks)".
Accuracies are read from `metrics.jsonl` (its length is the number of completed tasks, see run.py), not
recomputed from predictions, so the report shows exactly what the loop logged; only the confusions come
from `predictions/`.
"""

from __future__ import annotations

import glob
import gzip
import json
import math
import os
import re
import shlex
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from errwise import environment, metrics
from errwise.config import flatten, load_saved_config, to_dict
from errwise.data.formats import read_json
from errwise.errors import ErrwiseError
from errwise.rundir import completed_tasks

# Keys that vary between the runs averaged into one group (the task order is the point of averaging).
# Keys that vary between repetitions of one experiment (or between machines), not between experiments.
RUN_KEYS = (
    "data.order",
    "data.order_seed",
    "train.seed",
    "output_dir",
    "data.path",
    "model.device",
    "report_to",
    "start_from",
)


@dataclass(frozen=True)
class RunResult:
    path: Path
    config: dict
    label: str
    """The method name; `group_runs` turns it into a group label."""
    seen_accuracy: list[float]
    """Micro accuracy on all seen relations after each completed task."""
    matrix: list[list[float]]
    """a[i][j]: accuracy on task j after task i, for completed tasks (rows of metrics.jsonl)."""
    relations: dict[str, str]
    """Relation id -> name."""
    wall_seconds: float | None
    """From summary.json; None while the run is incomplete."""
    complete: bool
    tasks: list[list[str]]
    """Relation ids of each task of the stream, in order (accuracy_matrix.json lists them all)."""
    task_lines: list[dict]
    """The lines of metrics.jsonl."""
    environment: list[dict]
    """The lines of environment.jsonl, one per start of the run ([] for runs from before it was recorded)."""

    @property
    def tasks_done(self) -> int:
        return len(self.seen_accuracy)

    @property
    def tasks_total(self) -> int:
        return len(self.tasks)

    @property
    def order(self) -> int:
        return self.config["data"]["order"]

    @property
    def status(self) -> str:
        return "complete" if self.complete else f"incomplete ({self.tasks_done}/{self.tasks_total} tasks)"

    @property
    def seconds(self) -> float:
        """Wall time of a complete run; for an incomplete one, the time of its completed tasks so far."""
        if self.wall_seconds is not None:
            return self.wall_seconds
        return sum(line["seconds"] for line in self.task_lines)


def load_run(path: Path) -> RunResult:
    path = Path(path)
    if not (path / "metrics.jsonl").is_file():
        if (path / "config.yaml").is_file():
            raise ErrwiseError(f"{path} has no completed task yet (no metrics.jsonl); leave it out for now")
        raise ErrwiseError(
            f"no metrics.jsonl in {path}: not an errwise run folder; pass the folder `errwise run` printed"
        )
    lines = completed_tasks(path)  # a torn last line (a crash mid-write) is a task not done
    # Resolved through the dataclasses, so a run saved before a config key existed gets what it ran with.
    config = to_dict(load_saved_config(path / "config.yaml"))
    summary_path = path / "summary.json"
    summary = read_json(summary_path) if summary_path.is_file() else None  # damaged: one line naming the file
    relations = read_json(path / "relations.json")
    return RunResult(
        path=path,
        config=config,
        label=config["method"]["name"],
        seen_accuracy=[r["seen_accuracy"] for r in lines],
        matrix=[r["accuracy_row"] for r in lines],
        relations={rid: r["name"] for rid, r in relations.items()},
        wall_seconds=summary["wall_seconds"] if summary else None,
        complete=summary is not None,
        tasks=read_json(path / "accuracy_matrix.json")["tasks"],
        task_lines=lines,
        environment=environment.read(path),
    )


def last_predictions(run: RunResult) -> list[dict]:
    """Predictions on every seen relation after the run's last completed task."""
    return read_predictions(run.path, run.tasks_done - 1)


def read_predictions(run_dir: Path, task_index: int) -> list[dict]:
    """The prediction rows written after task `task_index` (0-based), of a run folder or a kept record."""
    path = Path(run_dir) / "predictions" / f"task_{task_index:02d}.jsonl"
    if not path.is_file() and path.with_suffix(".jsonl.gz").is_file():  # a kept record, compressed
        text = gzip.decompress(path.with_suffix(".jsonl.gz").read_bytes()).decode()
    else:
        text = path.read_text()
    return [json.loads(s) for s in text.splitlines() if s.strip()]


def group_runs(runs: Sequence[RunResult], ignore: Sequence[str] = ()) -> dict[str, list[RunResult]]:
    """Group runs whose configs are equal but for RUN_KEYS and `ignore` (config keys the caller knows do not
    change the results compared, e.g. data.max_val for test-set runs), in order of first appearance; runs in
    a group are sorted by (order, seed). Labels are method names, with the differing config keys added where
    two groups share a method name: "replay (train.epochs=3)"."""
    flats_by_run = [flatten(run.config) for run in runs]
    for key in ignore:
        if not any(key in f for f in flats_by_run):
            raise ErrwiseError(f"--ignore {key}: no run's config.yaml has this key (keys look like train.epochs)")
    by_key: dict[str, list[RunResult]] = {}
    for run, flat in zip(runs, flats_by_run):
        flat = {k: v for k, v in flat.items() if k not in RUN_KEYS and k not in ignore}
        by_key.setdefault(json.dumps(flat, sort_keys=True, default=str), []).append(run)
    flats = {key: json.loads(key) for key in by_key}
    out: dict[str, list[RunResult]] = {}
    for key, members in by_key.items():
        name = members[0].label
        rivals = [flats[k] for k in by_key if by_key[k][0].label == name]
        differing = sorted({k for f in rivals for k in f if any(g.get(k) != f.get(k) for g in rivals)})
        label = name + (f" ({', '.join(f'{k}={flats[key].get(k)}' for k in differing)})" if differing else "")
        out[label] = sorted(members, key=lambda r: (r.order, r.config["train"]["seed"], str(r.path)))
    return out


@dataclass(frozen=True)
class GroupStats:
    """What the tables and plots show for one group; fractions, not percent."""

    runs: list[RunResult]
    """The runs the numbers come from: the complete ones, or all if none is complete."""
    status: str
    seen: list[tuple[float, float]]
    """(mean, std) of the seen accuracy after each task, over the runs that reached it."""
    average: tuple[float, float]
    final: tuple[float, float]
    forgetting: tuple[float, float]
    bwt: tuple[float, float]
    learning: tuple[float, float]
    """Learning accuracy: the accuracy on each task right after training it, mean over tasks (plasticity)."""
    matrix: np.ndarray
    """(T, T) mean accuracy matrix, NaN above the diagonal and where no run has a value."""


def group_stats(runs: Sequence[RunResult]) -> GroupStats:
    used = [r for r in runs if r.complete] or list(runs)
    done = sorted({r.tasks_done for r in used})
    reached = str(done[0]) if len(done) == 1 else f"{done[0]}-{done[-1]}"
    status = "complete" if used[0].complete else f"incomplete ({reached}/{used[0].tasks_total} tasks)"
    n = max(done)
    seen = [metrics.mean_std([r.seen_accuracy[t] for r in used if r.tasks_done > t]) for t in range(n)]
    stacked = np.full((len(used), n, n), np.nan)  # (runs, T, T)
    for k, r in enumerate(used):
        for i, row in enumerate(r.matrix):
            stacked[k, i, : len(row)] = row
    count = np.isfinite(stacked).sum(0)
    mean_matrix = np.where(count > 0, np.nansum(stacked, 0) / np.maximum(count, 1), np.nan)
    return GroupStats(
        runs=used,
        status=status,
        seen=seen,
        average=metrics.mean_std([metrics.average_accuracy(r.seen_accuracy) for r in used]),
        final=metrics.mean_std([metrics.final_accuracy(r.seen_accuracy) for r in used]),
        forgetting=metrics.mean_std([metrics.forgetting(r.matrix) for r in used]),
        bwt=metrics.mean_std([metrics.backward_transfer(r.matrix) for r in used]),
        learning=metrics.mean_std([metrics.learning_accuracy(r.matrix) for r in used]),
        matrix=mean_matrix,
    )


# --- formatting -----------------------------------------------------------------------------------------


def pct(ms: tuple[float, float], n: int) -> str:
    """Percent with one decimal, "± std" only when there is more than one run to spread."""
    mean, std = ms
    if math.isnan(mean):
        return "—"
    return f"{100 * mean:.1f}±{100 * std:.1f}" if n > 1 else f"{100 * mean:.1f}"


def duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


def _row_label(label: str, st: GroupStats) -> str:
    return label if st.status == "complete" else f"{label} — {st.status}"


def _seen_cells(st: GroupStats, n: int) -> list[str]:
    """T1..Tn cells of one group; blank past the tasks it has (a shorter stream, or an incomplete group)."""
    reached = [sum(r.tasks_done > t for r in st.runs) for t in range(len(st.seen))]
    return [pct(st.seen[t], reached[t]) if t < len(st.seen) else "" for t in range(n)]


def results_table(stats: dict[str, GroupStats]) -> str:
    n = max(len(st.seen) for st in stats.values())
    header = [
        "Method",
        *(f"T{t + 1}" for t in range(n)),
        "Average",
        "Final",
        "Forgetting",
        "BWT",
        "Learning",
        "#orders",
    ]
    rows = []
    for label, st in stats.items():
        k = len(st.runs)
        summary = [pct(st.average, k), pct(st.final, k), pct(st.forgetting, k), pct(st.bwt, k), pct(st.learning, k)]
        orders = str(len({r.order for r in st.runs}))
        wall = duration(sum(r.seconds for r in st.runs) / k)
        rows.append([_row_label(label, st), *_seen_cells(st, n), *summary, orders, wall])
    return _table([*header, "Wall/run"], rows)


def runs_table(groups: dict[str, list[RunResult]], out_dir: Path) -> str:
    header = ["Run", "Method", "Order", "Seed", "Status", "Seen accuracy T1..", "Final", "Forgetting", "BWT"]
    rows = []
    for label, runs in groups.items():
        for r in runs:
            link = f"[{r.path.name}]({Path(os.path.relpath(r.path.resolve(), out_dir.resolve())).as_posix()})"
            seen = " ".join(f"{100 * a:.1f}" for a in r.seen_accuracy)
            forget, bwt = metrics.forgetting(r.matrix), metrics.backward_transfer(r.matrix)
            rows.append(
                [link, label, str(r.order), str(r.config["train"]["seed"]), r.status, seen]
                + [f"{100 * r.seen_accuracy[-1]:.1f}", f"{100 * forget:.1f}", f"{100 * bwt:.1f}"]
                + [str(sum(line["train_steps"] for line in r.task_lines))]
                + [duration(r.seconds) + ("" if r.complete else " so far")]
            )
    return _table([*header, "Steps", "Wall"], rows)


def confusions_section(label: str, st: GroupStats, top: int = 10) -> str:
    preds = [p for r in st.runs for p in last_predictions(r)]
    names = {rid: name for r in st.runs for rid, name in r.relations.items()}
    wrong = sum(not p["correct"] for p in preds)
    head = f"### {_row_label(label, st)}\n\n{wrong} errors in {len(preds)} predictions after the last task"
    head += f" ({len(st.runs)} run{'s' if len(st.runs) > 1 else ''})."
    if not wrong:
        return head
    top_pairs = metrics.confusions(preds, top)
    rows = [[names[g], names[p], str(c), f"{100 * c / wrong:.1f}%"] for g, p, c in top_pairs]
    return head + "\n\n" + _table(["Gold", "Predicted", "Count", "Share of errors"], rows)


def confused_pairs_table(
    groups: dict[str, list[RunResult]], stats: dict[str, GroupStats], baseline: str, top: int = 10
) -> str:
    """The `top` most confused relation pairs after the last task, both directions counted (a <-> b), summed over
    each group's complete runs, one column per group: ranked by the baseline's counts where there is one, else
    by the counts of all groups. Whether a mechanism makes the analogous pairs fall shows here."""
    counts: dict[str, Counter] = {}
    names: dict[str, str] = {}
    for label, runs in groups.items():
        c: Counter = Counter()
        for r in runs:
            if not r.complete:
                continue
            names.update(r.relations)
            c.update(tuple(sorted((p["gold"], p["pred"]))) for p in last_predictions(r) if not p["correct"])
        counts[label] = c
    if not any(counts.values()):
        return ""
    base = _baseline_label(groups, baseline)
    rank = counts[base] if base else sum(counts.values(), Counter())
    ranked = sorted(rank, key=lambda pair: (-rank[pair], pair))[:top]
    labels = list(groups)
    rows = [["all errors", *(str(sum(counts[g].values())) for g in labels)]]
    rows += [[f"{names[a]} ↔ {names[b]}", *(str(counts[g][(a, b)]) for g in labels)] for a, b in ranked]
    head = (
        "### Most confused pairs (both directions, summed over complete runs, after the last task)\n\n"
        f"Ranked by the counts of {base or 'all groups'}."
    )
    return head + "\n\n" + _table(["Pair", *(_row_label(g, stats[g]) for g in labels)], rows)


def phases_table(stats: dict[str, GroupStats]) -> str:
    """Seconds per phase of the loop, summed over tasks, mean over runs: where the time goes."""
    phases: list[str] = []
    for st in stats.values():
        for r in st.runs:
            for line in r.task_lines:
                phases += [p for p in line["phase_seconds"] if p not in phases]
    rows = []
    for label, st in stats.items():
        per_run = [[sum(t["phase_seconds"].get(p, 0) for t in r.task_lines) for p in phases] for r in st.runs]
        rows.append([_row_label(label, st), *(f"{v:.1f}" for v in np.mean(per_run, axis=0))])
    return _table(["Method", *phases], rows)


# --- comparison -----------------------------------------------------------------------------------------


def _final_by_order(runs: Sequence[RunResult]) -> dict[int, float]:
    """Final accuracy of the complete runs per task order (mean over seeds when an order has several)."""
    by_order: dict[int, list[float]] = {}
    for r in runs:
        if r.complete:
            by_order.setdefault(r.order, []).append(r.seen_accuracy[-1])
    return {o: sum(v) / len(v) for o, v in by_order.items()}


def _folder_stem(path: Path) -> str:
    """A run folder's name without its trailing `-<number>` (repdefer-3 -> repdefer): how a queue names the runs
    of one row, one per order."""
    return re.sub(r"-\d+$", "", path.name)


def _baseline_label(groups: dict[str, list[RunResult]], baseline: str) -> str | None:
    """The group `baseline` names: its label as printed; else the method of exactly one group; else the folder
    name stem (`repdefer` for repdefer-0, repdefer-1, ...) that every run of exactly one group has and no run
    of another group has."""
    if baseline in groups:
        return baseline
    named = [label for label, runs in groups.items() if runs[0].label == baseline]
    if len(named) > 1:
        stemmed = _stem_group(groups, baseline)
        if stemmed is not None:
            return stemmed
        raise ErrwiseError(f"baseline {baseline!r} matches groups {named}; pick one: --baseline '{named[0]}'")
    return named[0] if named else _stem_group(groups, baseline)


def _stem_group(groups: dict[str, list[RunResult]], stem: str) -> str | None:
    owners = {label for label, runs in groups.items() for r in runs if _folder_stem(r.path) == stem}
    if len(owners) != 1:
        return None
    (label,) = owners
    return label if all(_folder_stem(r.path) == stem for r in groups[label]) else None


def _compare(groups: dict[str, list[RunResult]], stats: dict[str, GroupStats], baseline: str) -> str:
    base = _baseline_label(groups, baseline)
    base_final = _final_by_order(groups[base]) if base else {}
    joints = [label for label, runs in groups.items() if runs[0].label == "joint"]
    joint_final = _final_by_order(groups[joints[0]]) if base and len(joints) == 1 and joints[0] != base else {}
    n = max(len(st.seen) for st in stats.values())
    header = [
        "Method",
        *(f"T{t + 1}" for t in range(n)),
        "Learning",
        "Forgetting",
        "Final",
        f"Δ Final vs {base or baseline}",
    ]
    rows = []
    for label, st in stats.items():
        gap = ""
        if label == base:
            delta, p, paired = "(baseline)", "", str(len(base_final))
        else:
            final = _final_by_order(groups[label])
            common = sorted(set(final) & set(base_final))
            delta, p, paired = "n/a", "n/a", str(len(common))
            if len(common) >= 2:
                d = metrics.paired_difference([final[o] for o in common], [base_final[o] for o in common])
                delta = f"{100 * d['mean']:+.1f}±{100 * d['std']:.1f}"
                p = "n/a (no variance)" if math.isnan(d["p"]) else f"{d['p']:.3f}"
            if joint_final and label != joints[0]:
                gap = _gap_closed(final, base_final, joint_final)
        final_cell = pct(st.final, len(st.runs))
        forget, learning = pct(st.forgetting, len(st.runs)), pct(st.learning, len(st.runs))
        rows.append([_row_label(label, st), *_seen_cells(st, n), learning, forget, final_cell, delta, p, paired, gap])
    note = (
        f"Δ: final accuracy minus {base or baseline}'s, in points, mean±std over task orders run by both "
        "(complete runs, paired by `data.order`); p: paired t-test over those orders; n/a with fewer than 2 "
        "paired orders" + ("" if base else f" or, as here, without a `{baseline}` group") + ". Learning: mean over "
        "tasks of the accuracy on a task right after training it (plasticity); Forgetting: mean over old tasks of "
        "the drop from their best accuracy to their final one (docs/metrics.md)."
    )
    if joint_final:
        note += (
            f" Gap closed: the share of the joint - {base} gap in final accuracy that a method recovers, "
            f"sum over the orders all three ran of (method - {base}) / sum of (joint - {base})."
        )
    return _table([*header, "p (paired t)", "Paired orders", "Gap closed"], rows) + "\n\n" + note


def _gap_closed(final: dict[int, float], base: dict[int, float], joint: dict[int, float]) -> str:
    """Share of the joint - baseline gap in final accuracy that `final` recovers, over the orders all three
    completed: sum(final - base) / sum(joint - base); n/a without such orders or without a positive gap."""
    common = sorted(set(final) & set(base) & set(joint))
    gap = sum(joint[o] - base[o] for o in common)
    if not common or gap <= 0:
        return "n/a"
    return f"{100 * sum(final[o] - base[o] for o in common) / gap:.0f} % ({len(common)})"


def error_case_table(groups: dict[str, list[RunResult]]) -> str:
    """Per task, summed over a group's runs: initial errors on the task's training data and on the memory,
    how many of them the trained model fixed, and how many initially correct cases it got wrong afterwards
    (read from `error_cases/task_XX_summary.json`, written by methods that mine error cases)."""
    counts = []
    for label, runs in groups.items():
        tasks = max((r.tasks_done for r in runs), default=0)
        for t in range(tasks):
            acc: dict[str, int] = {}
            for r in runs:
                path = r.path / "error_cases" / f"task_{t:02d}_summary.json"
                if path.is_file():
                    for source, c in json.loads(path.read_text()).items():
                        for key, v in c.items():
                            acc[f"{source}.{key}"] = acc.get(f"{source}.{key}", 0) + v
                rounds = r.path / "error_cases" / f"task_{t:02d}_consolidation.jsonl"
                if rounds.is_file():  # the memory answered again after the first round (train.consolidate)
                    rows = [json.loads(line) for line in rounds.read_text().splitlines() if line.strip()]
                    acc["consolidation.cases"] = acc.get("consolidation.cases", 0) + len(rows)
                    wrong = [row for row in rows if not row["correct"]]
                    acc["consolidation.errors"] = acc.get("consolidation.errors", 0) + len(wrong)
                    to_new = sum(w["pred"] in r.tasks[t] for w in wrong)  # answered as one of the task's relations
                    acc["consolidation.to_new"] = acc.get("consolidation.to_new", 0) + to_new
            if acc:
                counts.append((label, t, acc))
    if not counts:
        return ""
    # The held-out probe (errwise.probe_per_relation) gets its own columns, only when some run has one.
    has_probe = any(k.startswith("probe.") for *_, acc in counts for k in acc)
    sources = ("train", "memory", "probe") if has_probe else ("train", "memory")
    rounds = any("consolidation.cases" in acc for *_, acc in counts)
    rows = [
        [label, f"T{t + 1}"]
        + [str(acc.get(f"{s}.{k}", 0)) for s in sources for k in ("initial_errors", "fixed")]
        + [str(sum(acc.get(f"{s}.new_errors", 0) for s in sources))]
        + ([_consolidation_cell(acc)] if rounds else [])
        for label, t, acc in counts
    ]
    header = ["Method", "Task"] + [f"{s.capitalize()} {k}" for s in sources for k in ("errors", "fixed")]
    header += ["New errors"] + (["Consolidation errors"] if rounds else [])
    return (
        "### Error cases (summed over orders)\n\n"
        + _table(header, rows)
        + "\n\nErrors: wrong initial responses before training on the task; fixed: right after training; new "
        "errors: initially correct, wrong after training. Probe: memory instances held out from training "
        "(`errwise.probe_per_relation`)."
        + (
            " Consolidation errors: wrong answers of the memory of every seen relation after the first round "
            "(`train.consolidate`), of the memory instances answered; in brackets, how many of them answered one "
            "of the task's new relations (an old relation displaced by a new one)."
            if rounds
            else ""
        )
    )


def _consolidation_cell(acc: dict[str, int]) -> str:
    errors, cases = acc.get("consolidation.errors", 0), acc.get("consolidation.cases", 0)
    return f"{errors}/{cases} ({acc.get('consolidation.to_new', 0)} to new)" if cases else "0/0"


def helper_cost_table(groups: dict[str, list[RunResult]]) -> str:
    """What the instructor or the lesson distiller cost and yielded, summed over a group's runs and tasks (read
    from `instructor/` and `lessons/` summaries): calls, cache hits, tokens, seconds; accepted/rejected
    generated instances; lessons kept."""
    rows = []
    for label, runs in groups.items():
        acc: dict[str, float] = {}
        for r in runs:
            for kind in ("instructor", "lessons"):
                for path in sorted((r.path / kind).glob("task_*_summary.json")):
                    s = json.loads(path.read_text())
                    for k, v in s.get("cost", {}).items():
                        acc[k] = acc.get(k, 0) + v
                    acc["accepted"] = acc.get("accepted", 0) + s.get("accepted", 0)
                    acc["rejected"] = acc.get("rejected", 0) + sum(s.get("rejected", {}).values())
                    acc["lessons"] = acc.get("lessons", 0) + s.get("added", 0)
        if acc:
            rows.append(
                [label, len(runs)]
                + [int(acc.get(k, 0)) for k in ("calls", "hits", "prompt_tokens", "completion_tokens")]
                + [f"{acc.get('seconds', 0):.0f}"]
                + [int(acc.get(k, 0)) for k in ("accepted", "rejected", "lessons")]
            )
    if not rows:
        return ""
    header = ["Method", "Runs", "Calls", "Cache hits", "Prompt tok", "Completion tok", "Seconds", "Accepted"]
    header += ["Rejected", "Lessons added"]
    table = _table(header, [[str(c) for c in row] for row in rows])
    return "### Instructor / distiller cost (summed over orders and tasks)\n\n" + table


def environment_note(groups: dict[str, list[RunResult]]) -> str:
    """Where the compared runs come from different environments (versions, model bytes, dtype, threads, CPU), the
    fields that differ and which runs had each value; "" where they agree."""
    runs = [(label, r.order, r.environment) for label, g in groups.items() for r in g]
    diffs = environment.differences(runs)
    if not diffs:
        return ""
    return "### Environments differ\n\nThese rows were not all made in one environment:\n\n" + "\n".join(
        f"- {d}" for d in diffs
    )


def name_by_folders(groups: dict[str, list[RunResult]]) -> tuple[dict[str, list[RunResult]], list[str]]:
    """Groups relabelled by their run folders' name stem (repdefer for repdefer-0, repdefer-1, ...) where every run
    of a group has one stem that no other group's runs have; the others keep their label. Also the legend: one
    line per renamed group, `stem: label`."""
    stems = {label: {_folder_stem(r.path) for r in runs} for label, runs in groups.items()}
    out: dict[str, list[RunResult]] = {}
    legend = []
    for label, runs in groups.items():
        (stem,) = stems[label] if len(stems[label]) == 1 else ("",)
        taken = any(stem in other or stem == name for name, other in stems.items() if name != label)
        if not stem or taken or stem in out:
            out[label] = runs
            continue
        out[stem] = runs
        if stem != label:
            legend.append(f"{stem}: {label}")
    return out, legend


def compare_table(
    run_dirs: Sequence[Path],
    baseline: str | None = None,
    ignore: Sequence[str] = (),
    plot: Path | None = None,
    names: str = "config",
) -> str:
    """Markdown: methods as rows, T1..Tn and final accuracy (mean±std over orders), and the final-accuracy
    difference to `baseline` with a paired t-test over task orders; then error-case counts where recorded.
    `baseline`: a group's label or method name; None: replay where there is one, else no differences. A baseline
    named but matching no group is an error that lists the groups. `ignore`: config keys that do not split groups
    (see group_runs). `plot`: also draw the seen accuracy after each task, the groups side by side, to this PNG file.
    `names`: "config" labels a group by its method and the config keys that tell it from the method's other groups;
    "folders" by its run folders' name stem where it has one of its own (name_by_folders), with a legend."""
    if names not in ("config", "folders"):
        raise ErrwiseError(f"names must be config or folders, got {names!r}")
    groups = group_runs(_load_all(run_dirs), ignore)
    legend: list[str] = []
    if names == "folders":
        groups, legend = name_by_folders(groups)
    if baseline is not None and _baseline_label(groups, baseline) is None:
        names = "; ".join(f"'{label}'" for label in groups)
        raise ErrwiseError(f"baseline {baseline!r} matches no group; the groups are: {names}")
    baseline = baseline or "replay"
    stats = {label: group_stats(runs) for label, runs in groups.items()}
    if plot is not None:
        Path(plot).parent.mkdir(parents=True, exist_ok=True)
        plot_seen_accuracy(stats, Path(plot))
    table = _compare(groups, stats, baseline)
    runs = [r for g in groups.values() for r in g]
    extra = ["Rows named by their run folders:\n\n" + "\n".join(f"- {line}" for line in legend)] if legend else []
    extra += [subsample_note(runs), error_case_table(groups), confused_pairs_table(groups, stats, baseline)]
    extra += [helper_cost_table(groups), environment_note(groups)]
    extra = [t for t in extra if t]
    return "\n\n".join([table, *extra])


# --- plots ----------------------------------------------------------------------------------------------


def plot_seen_accuracy(stats: dict[str, GroupStats], path: Path) -> None:
    fig = Figure(figsize=(7.5, 4.5), dpi=150, layout="constrained")
    ax = fig.subplots()
    n = max(len(st.seen) for st in stats.values())
    for label, st in stats.items():
        x = np.arange(1, len(st.seen) + 1)
        mean = np.array([100 * m for m, _ in st.seen])
        std = np.array([100 * s for _, s in st.seen])
        line = ax.plot(x, mean, marker="o", label=f"{_row_label(label, st)} (n={len(st.runs)})")[0]
        ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xticks(range(1, n + 1), [f"T{t}" for t in range(1, n + 1)])
    lo, hi = ax.get_ylim()
    ax.set_ylim(max(0.0, lo), min(101.0, hi + 2))  # 101: a marker at 100% stays whole
    ax.set_xlabel("after training task")
    ax.set_ylabel("accuracy on all seen relations (%)")
    ax.set_title("Seen-relation accuracy (mean ± std over task orders)")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.savefig(path)


def plot_accuracy_matrix(stats: dict[str, GroupStats], path: Path) -> None:
    cols = min(3, len(stats))
    rows = math.ceil(len(stats) / cols)
    n = max(st.matrix.shape[0] for st in stats.values())
    side = 0.45 * max(n, 4)  # inches of heatmap per panel; labels and titles take about one more
    fig = Figure(figsize=(cols * (side + 0.9) + 1.0, rows * (side + 1.1)), dpi=150, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    fontsize = 9 if n <= 6 else 8 if n <= 10 else 6
    image = None
    for ax, (label, st) in zip(axes, stats.items(), strict=False):  # spare axes stay empty
        m = 100 * st.matrix
        image = ax.imshow(np.ma.masked_invalid(m), vmin=0, vmax=100, cmap="viridis", aspect="auto")
        for i, j in zip(*np.nonzero(np.isfinite(m)), strict=True):
            color = "white" if m[i, j] < 60 else "black"  # viridis is dark below ~60
            ax.text(j, i, f"{m[i, j]:.0f}", ha="center", va="center", fontsize=fontsize, color=color)
        ticks = range(m.shape[0])
        ax.set_xticks(ticks, [f"T{t + 1}" for t in ticks], fontsize=fontsize)
        ax.set_yticks(ticks, [f"T{t + 1}" for t in ticks], fontsize=fontsize)
        ax.set_xlabel("accuracy on task")
        ax.set_ylabel("after training task")
        ax.set_title(f"{_row_label(label, st)} (n={len(st.runs)})", fontsize="medium")
        ax.set_facecolor("white")
    for ax in axes[len(stats) :]:
        ax.set_axis_off()
    fig.colorbar(image, ax=list(axes), shrink=0.9, fraction=0.03, label="accuracy (%)")
    fig.savefig(path)


# --- the report -----------------------------------------------------------------------------------------


def subsample_note(runs: Sequence[RunResult]) -> str:
    """A note when some runs evaluated the tasks before their last on a subsample (eval.intermediate_test), else ""."""
    sizes = {line["eval_subsample"] for r in runs for line in r.task_lines if line.get("eval_subsample")}
    if not sizes:
        return ""
    n = sum(any(line.get("eval_subsample") for line in r.task_lines) for r in runs)
    return (
        f"Note: {n} of {len(runs)} runs evaluated the tasks before their last on a fixed subsample of "
        f"{', '.join(map(str, sorted(sizes)))} test instances per relation (`eval.intermediate_test`): their "
        "accuracies before the last task, and Average, Forgetting, BWT and Learning, which use them, are estimates "
        "on fewer instances; Final is on the full test set (metrics.jsonl: n_test, eval_subsample)."
    )


def _load_all(run_dirs: Sequence[Path]) -> list[RunResult]:
    unique: dict[Path, Path] = {}
    for p in run_dirs:  # a folder passed twice (`runs/a runs/a/`) counts once
        unique.setdefault(Path(p).resolve(), Path(p))
    return [load_run(p) for p in unique.values()]


def shell_runs(run_dirs: Sequence[Path]) -> str:
    """The run folders as a shell argument: `runs/fewrel-replay-*` when that glob matches exactly them."""
    paths = list(dict.fromkeys(Path(p) for p in run_dirs))
    parent, prefix = paths[0].parent, os.path.commonprefix([p.name for p in paths])
    if len(paths) > 1 and all(p.parent == parent for p in paths):
        if sorted(parent.glob(glob.escape(prefix) + "*")) == sorted(paths):
            return shlex.quote(f"{parent}/{prefix}") + "*"
    return " ".join(shlex.quote(str(p)) for p in paths)


def write_report(run_dirs: Sequence[Path], out_dir: Path, ignore: Sequence[str] = ()) -> Path:
    """Write `out_dir/report.md`, with `seen_accuracy.png` and `accuracy_matrix.png` beside it; its path.
    `ignore`: config keys that do not split groups (see group_runs)."""
    runs = _load_all(run_dirs)
    groups = group_runs(runs, ignore)
    stats = {label: group_stats(g) for label, g in groups.items()}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_seen_accuracy(stats, out_dir / "seen_accuracy.png")
    plot_accuracy_matrix(stats, out_dir / "accuracy_matrix.png")

    def distinct(section: str, key: str) -> str:
        return ", ".join(dict.fromkeys(str(r.config[section][key]) for r in runs))

    def stream(d: dict) -> str:
        if d["split"] == "fcre":
            return f"{d['dataset']}, few-shot protocol (FCRE), {d['shots']}-shot"
        return f"{d['dataset']}, {d['relations_per_task']} relations/task"

    dirs = shell_runs(run_dirs)
    n_runs = len(runs)
    parts = [
        "# errwise report",
        f"- Dataset: {'; '.join(dict.fromkeys(stream(r.config['data']) for r in runs))}\n"
        f"- Model: {distinct('model', 'name')}\n"
        f"- Runs: {n_runs} in {len(groups)} group{'s' if len(groups) > 1 else ''}"
        f" ({sum(r.complete for r in runs)} complete)\n"
        f"- Regenerate: `errwise report {dirs} --out {out_dir}`; compare: `errwise compare {dirs}`",
        "## Accuracy on all seen relations (%)",
        "Mean±std over the complete runs of each group (runs differing only in `data.order` and "
        "`train.seed`). Average: mean over tasks; Final: after the last task; Forgetting (Chaudhry et al., "
        "2018) and BWT (Lopez-Paz & Ranzato, 2017) in points; Learning: the accuracy on each task right after "
        "training it, mean over tasks (Riemer et al., 2019); Wall/run: mean wall time of a run.",
        results_table(stats),
        *[note for note in [subsample_note(runs)] if note],
        "![Seen-relation accuracy after each task](seen_accuracy.png)",
        "## Accuracy matrix (group mean, %)",
        "Row i: after training task i; column j: accuracy on task j's test data. The diagonal is how well a "
        "task is learnt; a column fading downwards is forgetting.",
        "![Accuracy matrix](accuracy_matrix.png)",
    ]
    if len(groups) > 1 and sum(g[0].label == "replay" for g in groups.values()) == 1:
        parts += ["## Compared with replay", _compare(groups, stats, "replay")]
    parts += ["## Runs", runs_table(groups, out_dir)]
    if note := environment_note(groups):
        parts += [note]
    parts += ["## Most frequent confusions (gold → predicted)", "Predictions after each run's last task."]
    parts += [confusions_section(label, st) for label, st in stats.items()]
    parts += ["## Time per phase (seconds per run, summed over tasks)", phases_table(stats)]
    path = out_dir / "report.md"
    path.write_text("\n\n".join(parts) + "\n")
    return path
