"""Every instruction template, in one place.

A training example is a prompt and an answer; the loss covers the answer tokens only. Every template ends
with `Relation:` and every answer is ` <relation name>` + end token, so prediction (scoring each seen
relation's name after the prompt) and all training objectives share one answer format.
"""

from __future__ import annotations

import re
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
    rejected: str = ""
    """A wrong answer (e.g. the model's own error) for the pairwise ranking objective; "" = none."""
    rank_weight: float = 0.0
    """Weight of that objective, -log sigmoid(log p(answer) - log p(rejected)) over summed answer log-probs."""
    distill: tuple[tuple[str, float], ...] = ()
    """Soft targets (relation name, probability), e.g. a previous model's view of the prompt: the KL objective from
    them to the current model's softmax over the same names' summed log-probs at `distill_temperature`; () = none."""
    distill_weight: float = 0.0
    """Weight of that objective."""
    distill_temperature: float = 1.0
    """Temperature of the current model's softmax (the targets were taken at the same one)."""


def _describe(inst: RelationInstance) -> str:
    return f"Sentence: {inst.text}\nHead: {inst.head_text}\nTail: {inst.tail_text}\n"


def plain_prompt(inst: RelationInstance, candidates: list[Relation] | None = None, hint: str = "") -> str:
    """The one prediction prompt: sentence, head, tail, optionally the candidate relations; `hint` (retrieved
    lessons, see `lessons_hint`) goes first."""
    cands = f"Options: {'; '.join(r.name for r in candidates)}\n" if candidates else ""
    return f"{hint}What is the relation of the head to the tail?\n{_describe(inst)}{cands}Relation:"


def plain_example(
    inst: RelationInstance, gold: Relation, candidates: list[Relation] | None = None, hint: str = ""
) -> Example:
    return Example(plain_prompt(inst, candidates, hint), gold.name, uid=inst.uid)


ANCHOR_HEAD = ("the", "subject")
ANCHOR_TAIL = ("the", "object")


def anchor_instance(rel: Relation) -> RelationInstance | None:
    """The relation's description as a pseudo-instance (None without a description): `the subject and the object :
    <description>`, head `the subject`, tail `the object` (FewRel's and Wikidata's descriptions speak of the subject
    and the object, head and tail in the data), so that the plain prompt shows the relation's meaning and direction."""
    if not rel.description.strip():
        return None
    tokens = (*ANCHOR_HEAD, "and", *ANCHOR_TAIL, ":", *rel.description.split())
    tail = len(ANCHOR_HEAD) + 1
    return RelationInstance(f"anchor/{rel.id}", tokens, (0, len(ANCHOR_HEAD)), (tail, tail + len(ANCHOR_TAIL)), rel.id)


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


# --- The instructor (LLMs-as-Instructors, Ying et al. 2024): chat messages, replies parsed by `parse_blocks`.

INSTRUCTOR_SYSTEM = "You write training data for a relation classifier. Follow the requested format exactly."


def _rel(r: Relation) -> str:
    return f'"{r.name}"' + (f" ({r.description})" if r.description else "")


def _case(inst: RelationInstance, answer: str | None = None) -> str:
    tail = f"\nRelation: {answer}" if answer is not None else ""
    return f"{_describe(inst)}".rstrip("\n") + tail


# One worked example of the reply format, for relations named as in neither FewRel nor TACRED: a 1.5B instructor
# copies a filled-in block far more reliably than it follows a described one (docs/results.md).
EXAMPLE_GOLD = Relation("example-gold", "founded by", "founder or co-founder of this organisation")
EXAMPLE_WRONG = Relation("example-wrong", "employer", "organisation for which the subject works")
EXAMPLE_CASE = (
    "Sentence: In 1976 , Steve Jobs and Steve Wozniak started Apple in a garage in Los Altos .\n"
    "Head: Apple\nTail: Steve Jobs\nRelation: founded by"
)
EXAMPLE_WHY = 'Why: Jobs created Apple rather than working for it, so it is "founded by" and not "employer".'
EXAMPLE_LESSON = (
    "Title: Creating is not working for\nWhen: The sentence says a person started, created or set up an "
    'organisation.\nLesson: If the tail created the head organisation, answer "founded by"; "employer" is for a '
    "person who only works for it."
)


def instructor_messages(
    inst: RelationInstance,
    gold: Relation,
    wrong: Relation,
    k: int,
    correct: list[tuple[RelationInstance, Relation]] = (),
    rationale: bool = True,
) -> list[dict[str, str]]:
    """LE (learning from an error) and, when `correct` similar cases are given, LEC (by contrast with them).

    The error case is shown in the very format the reply must use, then one worked example block of another
    pair of relations, then the request. The reply is k blocks of `Sentence/Head/Tail/Relation[/Why]` lines."""
    parts = [
        f"A relation classifier answered {_rel(wrong)} for this case; the correct relation is {_rel(gold)}.",
        _case(inst, gold.name),
    ]
    if correct:
        parts.append("Similar cases the classifier got right:")
        parts += [_case(x, r.name) for x, r in correct]
        parts.append("Keep what separates these cases from the mistake in mind.")
    example_why = f"\n{EXAMPLE_WHY}" if rationale else ""
    parts.append(
        f'An example of one case in the format, for other relations ("{EXAMPLE_GOLD.name}", not '
        f'"{EXAMPLE_WRONG.name}"):\n{EXAMPLE_CASE}{example_why}'
    )
    why = f'\nWhy: <why it is "{gold.name}" and not "{wrong.name}">' if rationale else ""
    parts.append(
        f"Write {k} new cases in that format, with new sentences and new entities, in which the relation of "
        f'the head to the tail is "{gold.name}" and could not be mistaken for "{wrong.name}". Each Sentence is '
        "one complete sentence; Head and Tail are two different phrases copied exactly from it. One block per "
        f"case, blocks separated by a blank line:\n"
        f"Sentence: <a new sentence>\nHead: <copied from the sentence>\nTail: <copied from the sentence>\n"
        f"Relation: {gold.name}{why}"
    )
    return [
        {"role": "system", "content": INSTRUCTOR_SYSTEM},
        {"role": "user", "content": "\n\n".join(parts)},
        {"role": "assistant", "content": "Sentence:"},  # prefill (in-process only): the reply starts in the format
    ]


VERIFY_NONE = "none of these, or only with head and tail swapped"


def verify_messages(inst: RelationInstance, options: list[Relation]) -> list[dict[str, str]]:
    """The meaning check of a generated instance: which of `options` (then "none / swapped") the sentence
    expresses from the head to the tail, answered with one letter (`parse_choice`)."""
    listed = [f"{chr(65 + i)}. {_rel(r)}" for i, r in enumerate(options)]
    listed.append(f"{chr(65 + len(options))}. {VERIFY_NONE}")
    return [
        {"role": "system", "content": "You check relation extraction data. Answer with one letter."},
        {
            "role": "user",
            "content": f"{_describe(inst)}Which relation does the sentence state holds from the head to the tail?\n"
            + "\n".join(listed)
            + "\nAnswer with the letter only.",
        },
    ]


def statement_messages(inst: RelationInstance, rel: Relation) -> list[dict[str, str]]:
    """The meaning check as one statement to confirm: does the sentence state that `rel`'s value for the head is
    the tail (the direction of a Wikidata property: the head is the subject)? Answered yes or no (`parse_yes`)."""
    return [
        {"role": "system", "content": "You check relation extraction data. Answer yes or no."},
        {
            "role": "user",
            "content": f"{_describe(inst)}Relation {_rel(rel)}.\nDoes the sentence itself state that the "
            f'"{rel.name}" of "{inst.head_text}" is "{inst.tail_text}" (this direction, not the reverse)? '
            "Answer yes or no.",
        },
    ]


def parse_yes(text: str) -> bool | None:
    """True for a reply that starts with yes, False for no, None otherwise."""
    word = re.match(r"\W*(\w+)", text.lower())
    return {"yes": True, "no": False}.get(word.group(1)) if word else None


def parse_choice(text: str, n: int) -> int | None:
    """The 0-based option a reply to `verify_messages` picks among n letters (the first letter A.. standing
    alone), or None."""
    m = re.search(rf"\b([A-{chr(64 + n)}])\b", text.strip())
    return ord(m.group(1)) - 65 if m else None


# --- The memory of lessons (ReasoningBank, Ouyang et al. 2025).

LESSON_SYSTEM = "You distil short, general, reusable lessons for a relation classifier from its past answers."


def lesson_messages(
    cases: list[RelationInstance], gold: Relation, wrong: Relation | None, n: int
) -> list[dict[str, str]]:
    """Distil n lessons from a group of cases: errors gold -> wrong, or successes on gold (wrong is None). One
    worked example lesson (another pair of relations) shows the format."""
    listed = "\n".join(f"{i + 1}. {_case(x)}" for i, x in enumerate(cases))
    if wrong is None:
        head = f"The classifier correctly answered {_rel(gold)} for these cases:\n{listed}"
        ask = f'Write {n} short general lesson(s) on how to recognise "{gold.name}".'
    else:
        head = (
            f"The classifier wrongly answered {_rel(wrong)} for these cases, whose correct relation is "
            f"{_rel(gold)}:\n{listed}"
        )
        ask = f'Write {n} short general lesson(s) that would avoid answering "{wrong.name}" for "{gold.name}".'
    others = f'"{EXAMPLE_GOLD.name}", not "{EXAMPLE_WRONG.name}"'
    example = (
        f"An example of a lesson in the format, for other relations ({others}); do not copy its content, your "
        f'lesson is about "{gold.name}":\n{EXAMPLE_LESSON}'
    )
    fmt = (
        "A lesson must help with new sentences too: name the clue, not these cases. Answer with exactly three lines "
        "per lesson, starting with Title:, When: and Lesson:\nTitle: <a few words>\n"
        "When: <the kind of sentence where it applies>\nLesson: <one or two sentences>"
    )
    return [
        {"role": "system", "content": LESSON_SYSTEM},
        {"role": "user", "content": f"{head}\n\n{ask}\n\n{example}\n\n{fmt}"},
        {"role": "assistant", "content": "Title:"},  # prefill (in-process only): the reply starts in the format
    ]


def lessons_hint(lessons: list[dict]) -> str:
    """Retrieved lessons as the first lines of a prediction prompt ("" when none)."""
    if not lessons:
        return ""
    return "Lessons:\n" + "".join(f"- {x['title']}: {x['content']}\n" for x in lessons)


def parse_blocks(text: str, keys: tuple[str, ...]) -> list[dict[str, str]]:
    """Parse `Key: value` lines into blocks; a block starts at each `keys[0]` line. Unknown lines are ignored,
    so a chatty reply still yields its well-formed blocks; missing keys are left out (validation decides)."""
    blocks: list[dict[str, str]] = []
    lower = {k.lower(): k for k in keys}
    for line in text.splitlines():
        key, sep, value = line.strip().lstrip("-*0123456789. ").partition(":")
        key = lower.get(key.strip().strip("*").lower())
        if not sep or key is None:
            continue
        if key == keys[0] or not blocks:
            blocks.append({})
        blocks[-1].setdefault(key, value.strip().strip("*").strip())
    return blocks
