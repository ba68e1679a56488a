"""The data every component speaks: frozen dataclasses, no file formats, deterministic from a seed.

Loaders in `formats.py` turn each external format into a `Corpus` (or, for the few-shot FCRE files, which fix
their own split and tasks, a `FewShotCorpus`); `stream.py` turns it into a `TaskStream` following the protocol.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Relation:
    """A relation type."""

    id: str
    """Identifier as in the dataset, e.g. `P156` (FewRel/Wikidata) or `per:city_of_birth` (TACRED)."""
    name: str
    """Readable name used in prompts and as the model's answer, e.g. `followed by`, `city of birth`."""
    description: str = ""
    """One-sentence description, used by instructions that explain the difference between relations."""


@dataclass(frozen=True)
class RelationInstance:
    """One sentence with a head and a tail entity and the relation between them.

    Spans are token offsets, end exclusive: `tokens[head[0]:head[1]]` is the head mention.
    """

    uid: str
    """Stable identifier, unique within a corpus, e.g. `P156/17` (relation id / index in the file)."""
    tokens: tuple[str, ...]
    head: tuple[int, int]
    tail: tuple[int, int]
    relation: str
    """Relation id (a key of `Corpus.relations`)."""

    @property
    def text(self) -> str:
        return " ".join(self.tokens)

    @property
    def head_text(self) -> str:
        return " ".join(self.tokens[self.head[0] : self.head[1]])

    @property
    def tail_text(self) -> str:
        return " ".join(self.tokens[self.tail[0] : self.tail[1]])


@dataclass(frozen=True)
class Corpus:
    """Everything a loader read: the relations (in canonical order) and all instances."""

    name: str
    relations: tuple[Relation, ...]
    instances: tuple[RelationInstance, ...]

    def relation(self, rel_id: str) -> Relation:
        for r in self.relations:
            if r.id == rel_id:
                return r
        raise KeyError(rel_id)

    def by_relation(self) -> dict[str, list[RelationInstance]]:
        """Instances grouped by relation id, in file order, for every relation (possibly empty)."""
        groups: dict[str, list[RelationInstance]] = {r.id: [] for r in self.relations}
        for inst in self.instances:
            groups[inst.relation].append(inst)
        return groups


@dataclass(frozen=True)
class FewShotCorpus:
    """A corpus that ships its protocol (the FCRE files): its own train/test split and the relation clusters that
    are the tasks."""

    name: str
    """e.g. `fewrel-5shot`."""
    relations: tuple[Relation, ...]
    train: tuple[RelationInstance, ...]
    test: tuple[RelationInstance, ...]
    clusters: tuple[tuple[str, ...], ...]
    """clusters[c]: the relation ids of cluster label c, in the order the files list them."""

    def relation(self, rel_id: str) -> Relation:
        for r in self.relations:
            if r.id == rel_id:
                return r
        raise KeyError(rel_id)


@dataclass(frozen=True)
class Task:
    """One step of the stream: new relations with their train/val/test instances."""

    index: int
    """0-based position in the stream (reported as T{index+1})."""
    relations: tuple[str, ...]
    """Relation ids introduced by this task."""
    train: tuple[RelationInstance, ...]
    val: tuple[RelationInstance, ...]
    test: tuple[RelationInstance, ...]


@dataclass(frozen=True)
class TaskStream:
    """A continual learning stream: tasks in order, plus all relations with names/descriptions."""

    name: str
    """e.g. `fewrel-order0`."""
    order: int
    """Index of the task order (0..4 for the standard protocol, 0..5 for FCRE)."""
    relations: tuple[Relation, ...]
    """Every relation of the stream, in canonical order."""
    tasks: tuple[Task, ...]

    def relation(self, rel_id: str) -> Relation:
        for r in self.relations:
            if r.id == rel_id:
                return r
        raise KeyError(rel_id)

    def seen_relations(self, upto: int) -> tuple[str, ...]:
        """Relation ids of tasks 0..upto inclusive, in stream order."""
        return tuple(r for t in self.tasks[: upto + 1] for r in t.relations)
