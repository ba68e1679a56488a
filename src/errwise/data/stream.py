"""The standard continual relation extraction protocol: task orders and per-relation splits.

Reproduces the RP-CRE / CRL / CEAR convention exactly: order i shuffles the canonical relation list with
`random.seed(2021 + 100*i)` and `numpy.argsort`, chunks it into tasks, and splits every relation's instances
after a shuffle seeded the same way (the seed is reset before each relation, as CRL's sampler does).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np

from errwise.data.types import Corpus, RelationInstance, Task, TaskStream
from errwise.errors import ErrwiseError

# The canonical relation lists of the CRE codebases (RP-CRE, CRL, CEAR: data/CFRLFewRel/id2rel.json and
# data/CFRLTacred/id2rel.json). The standard task orders are generated from them, so they are part of the
# protocol's definition; a user who downloads the official FewRel files has no id2rel.json.
FEWREL_ID2REL = (
    "P931 P4552 P140 P1923 P150 P6 P27 P449 P1435 P175 P1344 P39 P527 P740 P706 P84 P495 P123 P57 P22 P178 "
    "P241 P403 P1411 P135 P991 P156 P176 P31 P1877 P102 P1408 P159 P3373 P1303 P17 P106 P551 P937 P355 P710 "
    "P137 P674 P466 P136 P306 P127 P400 P974 P1346 P460 P86 P118 P264 P750 P58 P3450 P105 P276 P101 P407 "
    "P1001 P800 P131 P177 P364 P2094 P361 P641 P59 P413 P206 P412 P155 P26 P410 P25 P463 P40 P921"
).split()
TACRED_ID2REL = (
    "org:founded_by per:employee_of org:alternate_names per:cities_of_residence per:children per:title "
    "per:siblings per:religion per:age org:website per:stateorprovinces_of_residence org:member_of "
    "org:top_members/employees per:countries_of_residence org:city_of_headquarters org:members "
    "org:country_of_headquarters per:spouse org:stateorprovince_of_headquarters org:number_of_employees/members "
    "org:parents org:subsidiaries per:origin org:political/religious_affiliation per:other_family "
    "per:stateorprovince_of_birth org:dissolved per:date_of_death org:shareholders per:alternate_names "
    "per:parents per:schools_attended per:cause_of_death per:city_of_death per:stateorprovince_of_death "
    "org:founded per:country_of_birth per:date_of_birth per:city_of_birth per:charges"
).split()


def standard_order(id2rel: Sequence[str], order: int, relations_per_task: int) -> list[list[str]]:
    """Relation ids of each task of standard order `order` (complete chunks only)."""
    idx = list(range(len(id2rel)))
    random.Random(2021 + 100 * order).shuffle(idx)  # same stream as random.seed(...); random.shuffle(...)
    perm = np.argsort(idx)
    ids = [id2rel[j] for j in perm]
    n = len(ids) // relations_per_task
    return [ids[k * relations_per_task : (k + 1) * relations_per_task] for k in range(n)]


def split_relation(
    instances: Sequence[RelationInstance],
    *,
    seed: int,
    split: str,
    train_size: int,
    val_size: int,
    test_size: int,
    max_train: int | None = None,
    max_test: int | None = None,
    source: str = "",
) -> tuple[list[RelationInstance], list[RelationInstance], list[RelationInstance]]:
    """(train, val, test) of one relation. `fewrel`: fixed counts in that order; `tacred`: the first
    min(len//5, test_size) are test (CRL's `count <= 40` keeps up to 41; we cap at exactly test_size), the
    rest train capped at train_size, no val. `max_*` keep prefixes (reduced settings)."""
    xs = list(instances)
    random.Random(seed).shuffle(xs)
    if split == "tacred":
        n_test = min(len(xs) // 5, test_size)
        test, train, val = xs[:n_test], xs[n_test : n_test + train_size], []
    else:
        need = train_size + val_size + test_size
        if len(xs) < need:
            rel = xs[0].relation if xs else "?"
            raise ErrwiseError(
                f"{source}: relation {rel} has {len(xs)} instances, the split needs {need} "
                f"({train_size} train + {val_size} val + {test_size} test); lower --data.train_size/val_size/test_size"
            )
        train = xs[:train_size]
        val = xs[train_size : train_size + val_size]
        test = xs[train_size + val_size : need]
    return train[:max_train], val, test[:max_test]


def build_stream(
    corpus: Corpus,
    *,
    order: int,
    num_tasks: int | None,
    relations_per_task: int,
    split: str,
    train_size: int,
    val_size: int,
    test_size: int,
    max_train: int | None = None,
    max_test: int | None = None,
    split_seed: int | None = None,
    id2rel: Sequence[str] | None = None,
) -> TaskStream:
    """A TaskStream following the standard protocol on `corpus` (id2rel defaults to its relation order)."""
    id2rel = list(id2rel or [r.id for r in corpus.relations])
    known = {r.id for r in corpus.relations}
    missing = [r for r in id2rel if r not in known]
    if missing:
        raise ErrwiseError(f"{corpus.name}: relations {missing[:5]} of the task order are not in the data")
    chunks = standard_order(id2rel, order, relations_per_task)
    if num_tasks is not None:
        if num_tasks > len(chunks):
            raise ErrwiseError(
                f"{corpus.name}: {num_tasks} tasks of {relations_per_task} relations requested, the data has "
                f"{len(id2rel)} relations ({len(chunks)} tasks); lower --data.num_tasks"
            )
        chunks = chunks[:num_tasks]
    seed = 2021 + 100 * order if split_seed is None else split_seed
    groups = corpus.by_relation()
    tasks = []
    for k, rels in enumerate(chunks):
        parts = [
            split_relation(
                groups[r],
                seed=seed,
                split=split,
                train_size=train_size,
                val_size=val_size,
                test_size=test_size,
                max_train=max_train,
                max_test=max_test,
                source=corpus.name,
            )
            for r in rels
        ]
        tasks.append(
            Task(
                index=k,
                relations=tuple(rels),
                train=tuple(x for p in parts for x in p[0]),
                val=tuple(x for p in parts for x in p[1]),
                test=tuple(x for p in parts for x in p[2]),
            )
        )
    used = {r for c in chunks for r in c}
    return TaskStream(
        name=f"{corpus.name}-order{order}",
        order=order,
        relations=tuple(r for r in corpus.relations if r.id in used),
        tasks=tuple(tasks),
    )
