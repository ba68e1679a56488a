"""From instructor replies to validated training instances, and the backend a config asks for.

A reply is parsed into `Sentence/Head/Tail/Relation/Why` blocks (`prompts.parse_blocks`); each block becomes a
`RelationInstance` only if it passes validation, otherwise it is kept with the reason it was rejected.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from errwise.config import InstructorConfig
from errwise.data.types import Relation, RelationInstance
from errwise.errors import ErrwiseError
from errwise.instructor.client import CachedChat, LocalChat, OpenAIChat

BLOCK_KEYS = ("Sentence", "Head", "Tail", "Relation", "Why")
_TOKEN = re.compile(r"\w+(?:[-'.]\w+)*|[^\w\s]")
MAX_TOKENS = 80  # a generated sentence longer than this is rambling, not an instance


def tokenize(text: str) -> tuple[str, ...]:
    return tuple(_TOKEN.findall(text))


def normalise(text: str) -> str:
    """The key of the duplicate check: lower-cased tokens."""
    return " ".join(tokenize(text.lower()))


def find_span(tokens: tuple[str, ...], phrase: str) -> tuple[int, int] | None:
    want = tokenize(phrase.lower())
    low = [t.lower() for t in tokens]
    for i in range(len(low) - len(want) + 1):
        if want and low[i : i + len(want)] == list(want):
            return i, i + len(want)
    return None


@dataclass(frozen=True)
class Verdict:
    instance: RelationInstance | None
    """The new instance, or None when rejected."""
    reason: str
    """`ok`, or why the block was rejected."""


def validate(
    block: dict[str, str], gold: Relation, known: dict[str, Relation], taken: set[str], uid_prefix: str
) -> Verdict:
    """Accept a generated block as an instance of `gold`, or say why not. `known` maps lower-cased names of the
    relations seen so far to relations; `taken` holds normalised sentences that must not be repeated (test and
    training sentences, earlier generated ones); an accepted sentence is added to it."""
    missing = [k for k in ("Sentence", "Head", "Tail") if not block.get(k)]
    if missing:
        return Verdict(None, f"malformed: no {'/'.join(missing)}")
    name = block.get("Relation", gold.name).strip().strip('".').lower()
    if name not in known:
        return Verdict(None, "unknown relation")
    if known[name].id != gold.id:
        return Verdict(None, "relation is not the requested one")
    tokens = tokenize(block["Sentence"])
    if len(tokens) < 4 or len(tokens) > MAX_TOKENS:
        return Verdict(None, "sentence length")
    head, tail = find_span(tokens, block["Head"]), find_span(tokens, block["Tail"])
    if head is None or tail is None:
        return Verdict(None, "head or tail not in sentence")
    if head == tail or block["Head"].strip().lower() == block["Tail"].strip().lower():
        return Verdict(None, "head equals tail")
    key = normalise(block["Sentence"])
    if key in taken:
        return Verdict(None, "duplicate")
    taken.add(key)
    uid = f"{uid_prefix}/{hashlib.sha1(key.encode()).hexdigest()[:10]}"
    return Verdict(RelationInstance(uid, tokens, head, tail, gold.id), "ok")


def make_backend(cfg: InstructorConfig, run_dir: Path, target=None) -> CachedChat:
    """The instructor a config names, behind the on-disk response cache. `target` = (model, tokenizer) is used
    when the config asks for the target model itself."""
    cache = Path(cfg.cache_dir) if cfg.cache_dir else run_dir / "instructor" / "cache"
    if cfg.backend == "openai":
        base_url = cfg.base_url or os.environ.get("ERRWISE_INSTRUCTOR_BASE_URL")
        if not base_url:
            raise ErrwiseError(
                "instructor.backend openai needs a base URL: pass --instructor.base_url http://host:port/v1 "
                "or set ERRWISE_INSTRUCTOR_BASE_URL"
            )
        backend = OpenAIChat(base_url, cfg.model, timeout=cfg.timeout, max_retries=cfg.max_retries)
    elif target is not None:
        backend = LocalChat(*target)
    else:
        from errwise.model import load_model, load_tokenizer, pick_device, pick_dtype

        device = pick_device("auto")
        model = load_model(cfg.model, device=device, dtype=pick_dtype("auto", device), lora=False)
        backend = LocalChat(model.eval(), load_tokenizer(cfg.model))
    return CachedChat(backend, cache)
