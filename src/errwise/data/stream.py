"""The standard continual relation extraction protocol: task orders and per-relation splits.

Every CRE paper since RP-CRE (EMAR, RP-CRE, CRL, ACA, CEAR, CDec, DP-CRE) uses the same recipe: round i
shuffles the canonical relation list with seed 2021 + 100*i and cuts it into tasks; each relation's
instances are shuffled with the same seed and cut into train/val/test. Reproducing it exactly is what makes
our numbers comparable with theirs (`tests/test_stream.py` checks the orders against the published ones).

Few-shot CRE (SCKD, CPL, CPL+MI, DCRE, SIRUS) ships its split and its tasks as files instead: `fcre_stream`
(`tests/test_fcre.py` checks it against what their code computes from the files).
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence

import numpy as np

from errwise.data.types import Corpus, FewShotCorpus, RelationInstance, Task, TaskStream
from errwise.errors import ErrwiseError

# The canonical relation lists of the CRE codebases (RP-CRE, CRL, CEAR: data/{fewrel,tacred}/id2rel.json).
# They define the protocol: the standard task orders are permutations of these lists. Embedded because a
# user who downloads the official FewRel/TACRED files has no id2rel.json.
FEWREL_ID2REL = (
    "P931", "P4552", "P140", "P1923", "P150", "P6", "P27", "P449", "P1435", "P175",
    "P1344", "P39", "P527", "P740", "P706", "P84", "P495", "P123", "P57", "P22",
    "P178", "P241", "P403", "P1411", "P135", "P991", "P156", "P176", "P31", "P1877",
    "P102", "P1408", "P159", "P3373", "P1303", "P17", "P106", "P551", "P937", "P355",
    "P710", "P137", "P674", "P466", "P136", "P306", "P127", "P400", "P974", "P1346",
    "P460", "P86", "P118", "P264", "P750", "P58", "P3450", "P105", "P276", "P101",
    "P407", "P1001", "P800", "P131", "P177", "P364", "P2094", "P361", "P641", "P59",
    "P413", "P206", "P412", "P155", "P26", "P410", "P25", "P463", "P40", "P921",
)  # fmt: skip
# TACRED without `no_relation` and `per:country_of_death` (6 instances in all of TACRED).
TACRED_ID2REL = (
    "org:founded_by", "per:employee_of", "org:alternate_names",
    "per:cities_of_residence", "per:children", "per:title",
    "per:siblings", "per:religion", "per:age",
    "org:website", "per:stateorprovinces_of_residence", "org:member_of",
    "org:top_members/employees", "per:countries_of_residence", "org:city_of_headquarters",
    "org:members", "org:country_of_headquarters", "per:spouse",
    "org:stateorprovince_of_headquarters", "org:number_of_employees/members", "org:parents",
    "org:subsidiaries", "per:origin", "org:political/religious_affiliation",
    "per:other_family", "per:stateorprovince_of_birth", "org:dissolved",
    "per:date_of_death", "org:shareholders", "per:alternate_names",
    "per:parents", "per:schools_attended", "per:cause_of_death",
    "per:city_of_death", "per:stateorprovince_of_death", "org:founded",
    "per:country_of_birth", "per:date_of_birth", "per:city_of_birth",
    "per:charges",
)  # fmt: skip


def order_seed(order: int) -> int:
    """Seed of round `order` in the CRE codebases (their sampler of round i gets seed 2021 + 100*i)."""
    return 2021 + 100 * order


def standard_order(id2rel: Sequence[str], order: int, relations_per_task: int) -> list[list[str]]:
    """Relation ids of each task of standard order `order`; the last chunk is short if the count is uneven.

    The CRE code does `random.seed(s); random.shuffle(idx); numpy.argsort(idx)`; a local `random.Random(s)`
    draws the same numbers without touching the global state.
    """
    idx = list(range(len(id2rel)))
    random.Random(order_seed(order)).shuffle(idx)
    rels = [id2rel[j] for j in np.argsort(idx)]
    return [rels[i : i + relations_per_task] for i in range(0, len(rels), relations_per_task)]


def split_relation(
    instances: Sequence[RelationInstance],
    *,
    seed: int,
    split: str,
    train_size: int,
    val_size: int,
    test_size: int,
    max_train: int | None,
    max_test: int | None,
    max_val: int | None = None,
) -> tuple[list[RelationInstance], list[RelationInstance], list[RelationInstance]]:
    """Train, val and test instances of one relation.

    The CRE codebases re-seed before each relation's shuffle, so every relation is shuffled with `seed`.
    `split="fewrel"`: the first train_size are train, the next val_size val, the next test_size test.
    `split="tacred"`: the first min(len//5, test_size) are test, the rest train (at most train_size), no val.
    `max_train`/`max_val`/`max_test` keep a prefix, so a reduced setting is a subset of the standard split.
    """
    items = list(instances)
    random.Random(seed).shuffle(items)
    rel = items[0].relation if items else "?"
    if split == "fewrel":
        need = train_size + val_size + test_size
        if len(items) < need:
            raise ErrwiseError(
                f"relation {rel} has {len(items)} instances but the fewrel split needs {need} (train_size "
                f"{train_size} + val_size {val_size} + test_size {test_size}); lower data.train_size, "
                "data.val_size or data.test_size"
            )
        train, val, test = (
            items[:train_size],
            items[train_size : train_size + val_size],
            items[train_size + val_size : need],
        )
    elif split == "tacred":
        # CRL tests while `test_count <= 40`, i.e. up to 41 instances; we cap at exactly test_size (40), as
        # the papers describe the protocol. Train is capped at train_size (320), as in CRL.
        n_test = min(len(items) // 5, test_size)
        if n_test == 0:
            raise ErrwiseError(
                f"relation {rel} has {len(items)} instances; the tacred split needs at least 5 (len//5 are "
                "test) and data.test_size > 0; add instances or leave the relation out"
            )
        train, val, test = items[n_test:][:train_size], [], items[:n_test]
    else:
        raise ErrwiseError(f"unknown split {split!r}; use `fewrel` or `tacred`")
    if max_train is not None:
        train = train[:max_train]
    if max_val is not None:
        val = val[:max_val]
    if max_test is not None:
        test = test[:max_test]
    return train, val, test


def default_id2rel(corpus: Corpus) -> list[str]:
    """The canonical FewRel/TACRED list when the corpus holds all of it, else the corpus's relation order.

    So a full TACRED corpus streams the standard 40 relations (its `per:country_of_death` stays out, as in the
    CRE codebases) even though the loader keeps every relation.
    """
    ids = {r.id for r in corpus.relations}
    for canonical in (FEWREL_ID2REL, TACRED_ID2REL):
        if ids >= set(canonical):
            return list(canonical)
    return [r.id for r in corpus.relations]


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
    max_train: int | None,
    max_test: int | None,
    split_seed: int | None,
    max_val: int | None = None,
    id2rel: Sequence[str] | None = None,
) -> TaskStream:
    """The first `num_tasks` tasks (None = all complete ones) of standard order `order` over `id2rel`.

    `id2rel` defaults to `default_id2rel(corpus)`. When the relation count is not a multiple of
    `relations_per_task`, the short last chunk is dropped (with a warning) rather than making an uneven task.
    `split_seed` None = 2021 + 100*order, the seed the CRE codebases give the sampler of that round.
    """
    id2rel = list(id2rel) if id2rel is not None else default_id2rel(corpus)
    groups = corpus.by_relation()
    missing = [r for r in id2rel if not groups.get(r)]
    if missing:
        raise ErrwiseError(
            f"corpus {corpus.name} has no instances of relation(s) {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''} of the relation list; use a corpus that has them all or a "
            "relation list without them"
        )
    chunks = standard_order(id2rel, order, relations_per_task)
    complete = [c for c in chunks if len(c) == relations_per_task]
    if num_tasks is None:
        num_tasks = len(complete)
        if len(complete) < len(chunks):
            warnings.warn(
                f"{len(id2rel)} relations do not fill tasks of {relations_per_task}; dropping the last "
                f"{len(chunks[-1])} ({', '.join(chunks[-1])})",
                stacklevel=2,
            )
    if not 0 < num_tasks <= len(complete):
        raise ErrwiseError(
            f"corpus {corpus.name} has {len(id2rel)} relations, i.e. {len(complete)} tasks of "
            f"{relations_per_task}; asked for {num_tasks}; lower data.num_tasks or data.relations_per_task"
        )
    seed = order_seed(order) if split_seed is None else split_seed
    tasks = []
    for index, rels in enumerate(complete[:num_tasks]):
        train, val, test = [], [], []
        for rel in rels:
            tr, va, te = split_relation(
                groups[rel],
                seed=seed,
                split=split,
                train_size=train_size,
                val_size=val_size,
                test_size=test_size,
                max_train=max_train,
                max_test=max_test,
                max_val=max_val,
            )
            train += tr
            val += va
            test += te
        tasks.append(Task(index, tuple(rels), tuple(train), tuple(val), tuple(test)))
    chosen = {r for t in tasks for r in t.relations}
    relations = tuple(corpus.relation(r) for r in id2rel if r in chosen)
    return TaskStream(f"{corpus.name}-order{order}", order, relations, tuple(tasks))


# ------------------------------------------------------------------------------------------ few-shot CRE


def fcre_seed(order: int) -> int:
    """The seed of FCRE run `order`: SCKD's and CPL's six runs are seeds 100, 200, ..., 600 (orders 0-5)."""
    return 100 * (order + 1)


def fcre_order(seed: int, n_clusters: int = 8) -> list[int]:
    """The cluster of each task: the last cluster first, then the others as SCKD's and CPL's sampler draws them,
    `random.seed(seed); s = list(range(7)); random.shuffle(s); [7] + numpy.argsort(s)` (a local Random draws the
    same without touching the global state)."""
    s = list(range(n_clusters - 1))
    random.Random(seed).shuffle(s)
    return [n_clusters - 1, *np.argsort(s).tolist()]


def fcre_stream(
    corpus: FewShotCorpus,
    *,
    order: int,
    seed: int,
    num_tasks: int | None,
    val_size: int,
    max_train: int | None,
    max_val: int | None,
    max_test: int | None,
) -> TaskStream:
    """The FCRE protocol: task k is the relations of cluster `fcre_order(seed)[k]`, with every training instance of
    the files (100 per relation in task 1, K after) and every test instance; `num_tasks` None = all.

    `val_size` > 0 holds the last val_size training instances of each relation (in file order) out as its
    validation instances, the same for every seed: task 1's relations then train on 100 - val_size, the others on
    K - val_size. 0 is the published protocol. `max_*` keep a prefix, as in `build_stream`.
    """
    clusters = fcre_order(seed, len(corpus.clusters))
    num_tasks = len(clusters) if num_tasks is None else num_tasks
    if num_tasks > len(clusters):
        raise ErrwiseError(
            f"corpus {corpus.name} has {len(clusters)} tasks (relation clusters); asked for {num_tasks}; lower "
            "data.num_tasks"
        )
    train_of: dict[str, list[RelationInstance]] = {r.id: [] for r in corpus.relations}
    test_of: dict[str, list[RelationInstance]] = {r.id: [] for r in corpus.relations}
    for x in corpus.train:
        train_of[x.relation].append(x)
    for x in corpus.test:
        test_of[x.relation].append(x)
    tasks = []
    for index, c in enumerate(clusters[:num_tasks]):
        train, val, test = [], [], []
        for rel in corpus.clusters[c]:
            xs = train_of[rel]
            if len(xs) <= val_size:
                raise ErrwiseError(
                    f"relation {rel} ({corpus.relation(rel).name}) of corpus {corpus.name} has {len(xs)} training "
                    f"instance(s); data.val_size {val_size} must leave at least one to train on: lower data.val_size"
                )
            cut = len(xs) - val_size
            train += xs[:cut][:max_train]
            val += xs[cut:][:max_val]
            test += test_of[rel][:max_test]
        tasks.append(Task(index, corpus.clusters[c], tuple(train), tuple(val), tuple(test)))
    chosen = {r for t in tasks for r in t.relations}
    relations = tuple(r for r in corpus.relations if r.id in chosen)
    return TaskStream(f"{corpus.name}-seed{seed}", order, relations, tuple(tasks))


def subsample(instances: Sequence[RelationInstance], per_relation: int) -> list[RelationInstance]:
    """At most `per_relation` instances of each relation, always the same ones: a relation's instances shuffled with
    seed 0, the first per_relation kept (so a smaller subsample is part of a larger one), in their original order."""
    by_relation: dict[str, list[RelationInstance]] = {}
    for x in instances:
        by_relation.setdefault(x.relation, []).append(x)
    keep = set()
    for xs in by_relation.values():
        idx = list(range(len(xs)))
        random.Random(0).shuffle(idx)
        keep.update(xs[i].uid for i in idx[:per_relation])
    return [x for x in instances if x.uid in keep]
