"""The standard protocol: published task orders reproduced exactly, seeded splits, errors with a fix."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from errwise.data.formats import load_corpus, load_fewrel, load_tacred
from errwise.data.stream import (
    FEWREL_ID2REL,
    TACRED_ID2REL,
    build_stream,
    default_id2rel,
    split_relation,
    standard_order,
)
from errwise.data.types import Corpus, Relation, RelationInstance
from errwise.errors import ErrwiseError

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
STANDARD = {"fewrel": (FEWREL_ID2REL, 8), "tacred": (TACRED_ID2REL, 4)}
NO_CAPS = dict(max_train=None, max_test=None)
FEWREL_SPLIT = dict(split="fewrel", train_size=420, val_size=140, test_size=140, **NO_CAPS)
TACRED_SPLIT = dict(split="tacred", train_size=320, val_size=0, test_size=40, **NO_CAPS)


def shared(name: str) -> Path:
    path = SHARED / name
    if not path.is_file():
        pytest.skip(f"{path} not found (shared data folder absent)")
    return path


@pytest.mark.parametrize("dataset", sorted(STANDARD))
def test_canonical_lists_are_the_codebases_id2rel(dataset):
    assert list(STANDARD[dataset][0]) == json.loads(shared(f"{dataset}/id2rel.json").read_text())


@pytest.mark.parametrize("dataset", sorted(STANDARD))
def test_the_five_standard_orders_are_reproduced(dataset):
    published = json.loads(shared(f"{dataset}/task_order.json").read_text())
    id2rel, per_task = STANDARD[dataset]
    assert len(published) == 5
    for order, tasks in enumerate(published):
        assert standard_order(id2rel, order, per_task) == [tasks[f"T{k + 1}"] for k in range(len(tasks))]


def test_local_random_matches_the_global_seed_and_leaves_it_alone():
    """The CRE code seeds the global `random`; a local Random(seed) must shuffle identically."""
    idx = list(range(80))
    random.seed(2121)
    random.shuffle(idx)
    local = list(range(80))
    random.Random(2121).shuffle(local)
    assert idx == local
    random.seed(7)
    expected = random.random()
    random.seed(7)
    standard_order(FEWREL_ID2REL, 3, 8)
    assert random.random() == expected


def instances(rel: str, n: int) -> list[RelationInstance]:
    return [RelationInstance(f"{rel}/{i}", ("a", "b"), (0, 1), (1, 2), rel) for i in range(n)]


def test_fewrel_split_counts_and_prefix_caps():
    xs = instances("P1", 700)
    train, val, test = split_relation(xs, seed=2021, **FEWREL_SPLIT)
    assert (len(train), len(val), len(test)) == (420, 140, 140)
    assert len({x.uid for x in train + val + test}) == 700
    shuffled = list(xs)
    random.Random(2021).shuffle(shuffled)
    assert train + val + test == shuffled  # the CRE codebases' order: train, val, test
    small = split_relation(xs, seed=2021, **{**FEWREL_SPLIT, "max_train": 16, "max_test": 10})
    assert small == (train[:16], val, test[:10])  # a reduced setting is a subset of the standard split
    assert split_relation(xs, seed=2021, **FEWREL_SPLIT, max_val=5) == (train, val[:5], test)
    assert xs == instances("P1", 700)  # the input is not shuffled in place


def test_tacred_split_counts():
    train, val, test = split_relation(instances("r", 100), seed=1, **TACRED_SPLIT)
    assert (len(train), len(val), len(test)) == (80, 0, 20)  # len//5 test, the rest train
    train, val, test = split_relation(instances("r", 1000), seed=1, **TACRED_SPLIT)
    assert (len(train), len(val), len(test)) == (320, 0, 40)  # both capped
    with pytest.raises(ErrwiseError, match="relation r has 4 instances; the tacred split needs at least 5"):
        split_relation(instances("r", 4), seed=1, **TACRED_SPLIT)


def test_split_errors_name_the_relation_and_the_fix():
    with pytest.raises(ErrwiseError, match=r"relation P9 has 699 instances but .* needs 700 .*lower data"):
        split_relation(instances("P9", 699), seed=1, **FEWREL_SPLIT)
    with pytest.raises(ErrwiseError, match="unknown split 'x'"):
        split_relation(instances("P9", 10), seed=1, **{**FEWREL_SPLIT, "split": "x"})


@pytest.fixture(scope="module")
def fewrel80():
    return load_fewrel([shared("fewrel/fewrel80.json")], shared("fewrel/pid2name.json"))


def test_standard_fewrel_stream(fewrel80):
    published = json.loads(shared("fewrel/task_order.json").read_text())
    for order in (0, 4):
        s = build_stream(fewrel80, order=order, num_tasks=None, relations_per_task=8, split_seed=None, **FEWREL_SPLIT)
        assert s.name == f"fewrel-order{order}" and s.order == order
        assert [list(t.relations) for t in s.tasks] == [published[order][f"T{k + 1}"] for k in range(10)]
        assert [r.id for r in s.relations] == list(FEWREL_ID2REL)
        uids = [x.uid for t in s.tasks for x in (*t.train, *t.val, *t.test)]
        assert len(uids) == len(set(uids)) == 56000  # train, val and test are disjoint
        for t in s.tasks:
            assert (len(t.train), len(t.val), len(t.test)) == (8 * 420, 8 * 140, 8 * 140)
            for rel in t.relations:
                assert sum(x.relation == rel for x in t.train) == 420
                assert sum(x.relation == rel for x in t.test) == 140


def test_streams_are_deterministic_and_seeded_by_order(fewrel80):
    kw = dict(num_tasks=2, relations_per_task=8, split_seed=None, **FEWREL_SPLIT)
    a = build_stream(fewrel80, order=1, **kw)
    assert a == build_stream(fewrel80, order=1, **kw)
    assert a.tasks[0].test != build_stream(fewrel80, order=1, **{**kw, "split_seed": 5}).tasks[0].test
    explicit = build_stream(fewrel80, order=1, **{**kw, "split_seed": 2121})
    assert explicit == a  # split_seed None = 2021 + 100*order
    reduced = build_stream(fewrel80, order=1, **{**kw, "max_train": 16, "max_test": 10})
    rel = a.tasks[1].relations[3]
    full_train = [x for x in a.tasks[1].train if x.relation == rel]
    assert [x for x in reduced.tasks[1].train if x.relation == rel] == full_train[:16]


def test_small_stream_from_fixtures():
    corpus = load_corpus(str(FIXTURES / "fewrel_small.json"), str(FIXTURES / "pid2name_small.json"))
    split = dict(split="fewrel", train_size=3, val_size=1, test_size=2, **NO_CAPS)
    s = build_stream(corpus, order=0, num_tasks=None, relations_per_task=1, split_seed=None, **split)
    assert len(s.tasks) == 3 and [r.id for r in s.relations] == ["P17", "P131", "P26"]
    assert sorted(r for t in s.tasks for r in t.relations) == ["P131", "P17", "P26"]
    assert all((len(t.train), len(t.val), len(t.test)) == (3, 1, 2) for t in s.tasks)
    assert s.seen_relations(1) == s.tasks[0].relations + s.tasks[1].relations
    two = build_stream(corpus, order=0, num_tasks=2, relations_per_task=1, split_seed=None, **split)
    assert two.tasks == s.tasks[:2] and len(two.relations) == 2


def test_tacred_fixture_stream_and_its_too_small_relations():
    tacred = load_tacred([FIXTURES / "tacred_small" / "train.json"])
    kw = dict(order=0, num_tasks=None, relations_per_task=1, split_seed=None)
    id2rel = ["org:founded_by", "per:city_of_birth"]
    small = dict(split="fewrel", train_size=2, val_size=0, test_size=1, **NO_CAPS)
    s = build_stream(tacred, id2rel=id2rel, **small, **kw)
    assert s.name == "tacred-order0" and [(len(t.train), len(t.test)) for t in s.tasks] == [(2, 1), (2, 1)]
    with pytest.raises(ErrwiseError, match="relation org:founded_by has 3 instances; the tacred split needs"):
        build_stream(tacred, id2rel=id2rel, **TACRED_SPLIT, **kw)


def synthetic(ids, n=10) -> Corpus:
    return Corpus("syn", tuple(Relation(r, r) for r in ids), tuple(x for r in ids for x in instances(r, n)))


def test_full_tacred_streams_the_standard_40_relations():
    """A whole TACRED corpus also has per:country_of_death; the standard stream leaves it out."""
    published = json.loads(shared("tacred/task_order.json").read_text())
    corpus = synthetic(["per:country_of_death", *reversed(TACRED_ID2REL)])
    assert default_id2rel(corpus) == list(TACRED_ID2REL)
    s = build_stream(corpus, order=2, num_tasks=None, relations_per_task=4, split_seed=None, **TACRED_SPLIT)
    assert [list(t.relations) for t in s.tasks] == [published[2][f"T{k + 1}"] for k in range(10)]
    assert all((len(t.train), len(t.test)) == (4 * 8, 4 * 2) for t in s.tasks)


def test_stream_errors_and_the_short_last_task():
    corpus = synthetic(["a", "b", "c", "d", "e"])
    split = dict(split="fewrel", train_size=5, val_size=0, test_size=5, **NO_CAPS)
    kw = dict(order=0, relations_per_task=2, split_seed=None, **split)
    with pytest.warns(UserWarning, match="dropping the last 1"):
        s = build_stream(corpus, num_tasks=None, **kw)
    assert len(s.tasks) == 2 and len(s.relations) == 4
    with pytest.raises(ErrwiseError, match=r"corpus syn has 5 relations, i.e. 2 tasks of 2; asked for 3"):
        build_stream(corpus, num_tasks=3, **kw)
    with pytest.raises(ErrwiseError, match="corpus syn has no instances of relation.* zz"):
        build_stream(corpus, num_tasks=1, id2rel=["a", "zz"], **kw)
    with pytest.raises(ErrwiseError, match="relation .* has 10 instances but the fewrel split needs 11"):
        build_stream(corpus, num_tasks=1, **{**kw, "train_size": 6})  # 6 + 5 > 10
