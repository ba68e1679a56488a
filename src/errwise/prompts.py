"""Every instruction template, in one place.

A training example is a prompt and an answer; the loss covers the answer tokens only. Every template ends
with `Relation:` and every answer is ` <relation name>` + end token, so prediction (scoring each seen
relation's name after the prompt) and all training objectives share one answer format.
"""

from __future__ import annotations

from dataclasses import dataclass

from errwise.data.types import Relation, RelationInstance


@dataclass(frozen=True)
class Example:
    """One instruction-tuning example."""

    prompt: str
    answer: str
    """The relation name; the tokenizer adds the leading space and the end token (see model.label_ids)."""
    weight: float = 1.0
    kind: str = "plain"
    """plain | error | contrastive | ... (logged, so a run shows what it trained on)."""
    uid: str = ""


def _describe(inst: RelationInstance) -> str:
    return f"Sentence: {inst.text}\nHead: {inst.head_text}\nTail: {inst.tail_text}\n"


def plain_prompt(inst: RelationInstance, candidates: list[Relation] | None = None) -> str:
    """The one prediction prompt: sentence, head, tail, optionally the candidate relations."""
    cands = f"Options: {'; '.join(r.name for r in candidates)}\n" if candidates else ""
    return f"What is the relation of the head to the tail?\n{_describe(inst)}{cands}Relation:"


def plain_example(inst: RelationInstance, gold: Relation, candidates: list[Relation] | None = None) -> Example:
    return Example(plain_prompt(inst, candidates), gold.name, uid=inst.uid)


def confront_example(inst: RelationInstance, gold: Relation, wrong: Relation, weight: float = 1.0) -> Example:
    """Error case, second objective: the model sees its own wrong answer and must give the right one."""
    prompt = (
        f"What is the relation of the head to the tail?\n{_describe(inst)}"
        f'A previous answer was "{wrong.name}", which is wrong.\nRelation:'
    )
    return Example(prompt, gold.name, weight, "error", inst.uid)


def contrastive_example(
    inst: RelationInstance,
    gold: Relation,
    wrong: Relation,
    shots: list[RelationInstance],
    options: list[Relation],
    weight: float = 1.0,
) -> Example:
    """Instruction-based contrastive tuning: the error case beside instances of the relation it was confused
    with (taken from memory), the relations' descriptions, and the request to tell them apart."""
    lines = ["Tell apart the relations below."]
    for r in options:
        lines.append(f"- {r.name}: {r.description}" if r.description else f"- {r.name}")
    for s in shots:
        lines.append(f'Example of "{wrong.name}":\n{_describe(s)}Relation: {wrong.name}')
    lines.append(f'Now this one, which is not "{wrong.name}":\n{_describe(inst)}Relation:')
    return Example("\n".join(lines), gold.name, weight, "contrastive", inst.uid)
