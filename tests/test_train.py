"""The pairwise ranking objective: it ranks by the prediction rule's own score, and training on it corrects."""

from __future__ import annotations

import copy

import torch

from errwise.model import build_labels, score_candidates
from errwise.prompts import Example
from errwise.train import answer_nll, collate, encode, rank_losses, train

PROMPT = "Sentence: Ana Velk was born in Lisbon .\nHead: Ana Velk\nTail: Lisbon\nRelation:"
GOLD, WRONG = "place of birth", "employer"


def margin(model, tok) -> float:
    """log p(gold) - log p(wrong) as prediction scores them (summed answer log-probabilities)."""
    labels = build_labels(tok, [GOLD, WRONG])
    _, scores = score_candidates(model, [tok(PROMPT)["input_ids"]], labels, pad_id=tok.pad_token_id, exhaustive=True)
    return float(scores[0, 0] - scores[0, 1])


def test_the_ranking_loss_is_a_function_of_the_prediction_score_margin(tiny):
    model, tok = tiny
    rows = [encode(tok, Example(PROMPT, GOLD), 64), encode(tok, Example(PROMPT, WRONG), 64)]
    with torch.no_grad():
        nll, n = answer_nll(model, collate(rows, tok.pad_token_id))
    assert n.tolist() == [len(r) - r.count(-100) for _, r in rows]
    loss = rank_losses(nll[:1], nll[1:])
    expected = torch.nn.functional.softplus(torch.tensor(-margin(model, tok)))
    assert torch.allclose(loss, expected.reshape(1), atol=1e-4)


def test_training_on_the_ranking_loss_alone_widens_the_margin(tiny):
    """Zero cross-entropy weight, ranking weight 1: a few steps move the gold answer above the wrong one; the
    pair's second sequence is counted in the processed tokens."""
    model, tok = tiny
    model = copy.deepcopy(model)
    before = margin(model, tok)
    ex = Example(PROMPT, GOLD, weight=0.0, rejected=WRONG, rank_weight=1.0)
    stats = train(
        model, tok, [ex], epochs=1, max_steps=5, batch_size=1, lr=1e-3, weight_decay=0.0,
        warmup_ratio=0.0, max_length=64, seed=0,
    )  # fmt: skip
    after = margin(model, tok)
    assert after > before + 0.5, (before, after)
    pair_tokens = len(encode(tok, ex, 64)[0]) + len(encode(tok, Example(PROMPT, WRONG), 64)[0])
    assert stats.tokens == 5 * pair_tokens
