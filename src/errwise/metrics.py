"""Continual-learning metrics: pure functions of per-instance predictions and of the accuracy matrix.

The accuracy matrix is lower-triangular, a list of rows: `a[i][j]` is the accuracy on task j's test data
after training task i (row i has i + 1 entries). A task with no test instance has NaN accuracy; the
matrix metrics skip NaN entries rather than letting one empty task poison the whole number.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else math.nan


def accuracy_row(preds: Sequence[Mapping], num_tasks: int) -> list[float]:
    """Accuracy on each task 0..num_tasks-1 (by the task of the gold relation): one row of the matrix."""
    correct = [0] * num_tasks
    total = [0] * num_tasks
    for p in preds:
        total[p["task"]] += 1
        correct[p["task"]] += bool(p["correct"])
    return [c / n if n else math.nan for c, n in zip(correct, total, strict=True)]


def seen_accuracy(preds: Sequence[Mapping]) -> float:
    """Micro accuracy over every test instance of the relations seen so far: the T1..Tn row of CRE papers.

    Micro, not the mean of the accuracy row: CRE codebases (RP-CRE, CRL, CEAR) count instances, so a task
    with more test data weighs more.
    """
    return sum(bool(p["correct"]) for p in preds) / len(preds) if preds else math.nan


def average_accuracy(seen: Sequence[float]) -> float:
    """Mean of the seen accuracies after each task (average incremental accuracy)."""
    return sum(seen) / len(seen)


def final_accuracy(seen: Sequence[float]) -> float:
    """Seen accuracy after the last task: the headline number of CRE papers."""
    return seen[-1]


def forgetting(matrix: Sequence[Sequence[float]]) -> float:
    """Average forgetting (Chaudhry et al., 2018, "Riemannian walk"): for each task but the last, the drop
    from its best accuracy before the final task to its accuracy after it; 0.0 after a single task."""
    last = len(matrix) - 1
    if last == 0:
        return 0.0
    drops = []
    for j in range(last):
        earlier = [matrix[i][j] for i in range(j, last) if not math.isnan(matrix[i][j])]
        drops.append(max(earlier) - matrix[last][j] if earlier else math.nan)
    return _nanmean(drops)


def backward_transfer(matrix: Sequence[Sequence[float]]) -> float:
    """Backward transfer (Lopez-Paz & Ranzato, 2017, GEM): mean of final minus just-learned accuracy over
    every task but the last; negative means forgetting. 0.0 after a single task."""
    last = len(matrix) - 1
    if last == 0:
        return 0.0
    return _nanmean([matrix[last][j] - matrix[j][j] for j in range(last)])


def learning_accuracy(matrix: Sequence[Sequence[float]]) -> float:
    """Learning accuracy (Riemer et al., 2019, "Learning to learn without forgetting"): mean over tasks of the
    accuracy on task j right after training it, a[j][j]. The plasticity side of forgetting: a method can forget
    less by learning each new task less well, which final accuracy alone does not tell apart."""
    return _nanmean([row[j] for j, row in enumerate(matrix)])


def summary(seen: Sequence[float], matrix: Sequence[Sequence[float]]) -> dict[str, object]:
    """The accuracy figures of a run's summary.json."""
    return {
        "seen_accuracy": list(seen),
        "average_accuracy": average_accuracy(seen),
        "final_accuracy": final_accuracy(seen),
        "forgetting": forgetting(matrix),
        "backward_transfer": backward_transfer(matrix),
    }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1, as papers report over task orders); std 0.0 for a single value."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def confusions(preds: Sequence[Mapping], top: int = 10) -> list[tuple[str, str, int]]:
    """The `top` most frequent (gold, pred, count) among wrong predictions; ties by (gold, pred), so the
    listing does not depend on the order of the predictions."""
    counts = Counter((p["gold"], p["pred"]) for p in preds if not p["correct"])
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(gold, pred, n) for (gold, pred), n in ranked[:top]]


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict:
    """Mean and std of a - b over paired runs (same task order), with the paired t-test p-value.

    Pairing by order removes the order-to-order variance that dominates CRE results. p is NaN with fewer
    than two pairs or when every difference is the same (the t statistic is undefined).
    """
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    mean, std = mean_std(diff)
    # Differences of ratios of counts carry float noise (0.3 - 0.2 != 0.1): treat ~0 spread as none.
    p = math.nan
    if len(diff) >= 2 and std > 1e-12 * max(1.0, abs(mean)):
        p = float(stats.ttest_rel(a, b).pvalue)
    return {"mean": mean, "std": std, "p": p, "n": len(diff)}
