"""The objectives an example adds: pairwise ranking (it ranks by the prediction rule's own score, and training on it
corrects) and distillation of soft targets (the KL, its packed rows, its targets, its cost)."""

from __future__ import annotations

import copy
import dataclasses
import math
import time

import pytest
import torch

from errwise.model import build_labels, score_candidates
from errwise.prompts import Example
from errwise.train import (
    answer_nll,
    collate,
    collate_segments,
    distill_losses,
    encode,
    encode_segments,
    packed_loss,
    rank_losses,
    segment_nll,
    soft_targets,
    train,
)

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


# --- distillation of soft targets (errwise.distill_weight) --------------------------------------------------------

NAMES = [GOLD, WRONG, "country of origin", "country of citizenship", "father"]


def test_the_distillation_loss_on_a_hand_computed_case():
    """KL(p || softmax(-nll / T)): zero where the current scores give the targets; its gradient raises the score of
    the label the targets hold likelier than the current model does."""
    nll = torch.tensor([1.0, 3.0], requires_grad=True)
    same = torch.softmax(-nll.detach() / 2, dim=0)
    assert distill_losses(nll, same, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    nll = torch.zeros(2, requires_grad=True)  # current: 0.5 / 0.5
    target = torch.tensor([0.75, 0.25])
    loss = distill_losses(nll, target, 1.0)
    assert loss.item() == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5), abs=1e-6)
    loss.backward()
    assert nll.grad.tolist() == pytest.approx([0.25, -0.25])  # (p - q) / T: descent lowers the first label's nll


def test_one_row_per_prompt_scores_every_answer_as_prediction_and_as_separate_rows(tiny):
    """A packed row (the prompt once, then the answer, the rejected answer and the distillation labels, each seeing
    the prompt alone) gives the answer's and rejected answer's NLL of separate rows, the labels' prediction
    scores, and the loss and gradients of the separate rows' ranking objective."""
    model, tok = tiny
    model = copy.deepcopy(model)
    other = "Sentence: Bo works at Acme in Gdansk .\nHead: Bo\nTail: Acme\nRelation:"
    ex = Example(PROMPT, GOLD, rejected=WRONG, rank_weight=0.5, distill=tuple((n, 0.2) for n in NAMES))
    ex = dataclasses.replace(ex, distill_weight=1.0)
    plain = Example(other, WRONG, weight=2.0)
    rows = [encode_segments(tok, e, 64) for e in (ex, plain)]
    assert [len(segs) for _, segs in rows] == [2 + len(NAMES), 1]
    with torch.no_grad():
        nll, n = segment_nll(model, collate_segments(rows, tok.pad_token_id))
        sep, n_sep = answer_nll(
            model, collate([encode(tok, e, 64) for e in (ex, Example(PROMPT, WRONG), plain)], tok.pad_token_id)
        )
    assert torch.allclose(nll[[0, 1, 7]], sep, atol=1e-4) and n[[0, 1, 7]].tolist() == n_sep.tolist()
    _, scores = score_candidates(
        model, [rows[0][0]], build_labels(tok, NAMES), pad_id=tok.pad_token_id, exhaustive=True
    )
    assert torch.allclose(-nll[2:7], scores[0], atol=1e-4)

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    no_distill = dataclasses.replace(ex, distill=())
    w = torch.tensor([1.0, 2.0])
    packed, distill, _ = packed_loss(model, tok, [no_distill, plain], w, 64)
    assert distill.item() == 0.0
    g_packed = grads(packed)
    sep, n_sep = answer_nll(
        model, collate([encode(tok, e, 64) for e in (no_distill, plain, Example(PROMPT, WRONG))], tok.pad_token_id)
    )
    separate = (sep[:2] / n_sep[:2] * w).sum() + 0.5 * rank_losses(sep[0], sep[2])
    assert packed.item() == pytest.approx(separate.item(), rel=1e-4)
    assert torch.allclose(g_packed, grads(separate), atol=1e-5)


def test_the_model_s_own_targets_cost_nothing_and_training_on_others_moves_it_toward_them(tiny):
    """soft_targets are the model's own view: distilling them into the same model is a zero loss. Targets that
    prefer the other label than the model does, trained on alone (cross-entropy weight 0), move the model's softmax
    toward them."""
    model, tok = tiny
    model = copy.deepcopy(model)
    ex = Example(PROMPT, GOLD, weight=0.0, distill_weight=1.0, distill_temperature=2.0)
    (own,) = soft_targets(model, tok, [ex], NAMES, top_k=3, temperature=2.0, max_length=64)
    assert len(own) == 3 and sum(p for _, p in own) == pytest.approx(1.0)
    assert [p for _, p in own] == sorted((p for _, p in own), reverse=True)
    with torch.no_grad():
        _, distill, _ = packed_loss(model, tok, [dataclasses.replace(ex, distill=own)], torch.zeros(1), 64)
    assert distill.item() == pytest.approx(0.0, abs=1e-5)
    ex = dataclasses.replace(ex, distill=((GOLD, 0.9), (WRONG, 0.1)))

    def log_odds() -> float:  # of the gold label, at the temperature
        (view,) = soft_targets(model, tok, [ex], [WRONG, GOLD], top_k=2, temperature=2.0, max_length=64)
        return math.log(dict(view)[GOLD] / dict(view)[WRONG])

    before = log_odds()
    assert before < 0  # the random model prefers the other label
    stats = train(
        model, tok, [ex], epochs=1, max_steps=10, batch_size=1, lr=1e-3, weight_decay=0.0,
        warmup_ratio=0.0, max_length=64, seed=0,
    )  # fmt: skip
    assert log_odds() > before + 0.5, (before, log_odds())
    assert stats.distill_loss > 0 and stats.distill_loss == pytest.approx(stats.loss)  # its only term
    prompt, segments = encode_segments(tok, ex, 64)
    assert stats.tokens == 10 * (len(prompt) + sum(map(len, segments)))  # the prompt once per step


def test_the_cost_of_distillation_per_training_step(tiny):
    """Seconds per step of plain examples, and of the same examples carrying 5 distillation targets each (printed,
    not asserted: on the tiny model the cost is mostly overhead)."""
    model, tok = tiny
    model = copy.deepcopy(model)
    targets = tuple((n, 0.2) for n in NAMES)
    plain = [Example(PROMPT, GOLD), Example("Sentence: Bo works at Acme .\nHead: Bo\nTail: Acme\nRelation:", WRONG)]
    kw = dict(epochs=1, max_steps=10, batch_size=2, lr=1e-4, weight_decay=0.0, warmup_ratio=0.0, max_length=64, seed=0)
    seconds = {}
    for name, exs in (
        ("plain", plain),
        ("distill", [dataclasses.replace(e, distill=targets, distill_weight=1.0) for e in plain]),
    ):
        train(model, tok, exs, **{**kw, "max_steps": 2})  # warm-up
        t = time.perf_counter()
        train(model, tok, exs, **kw)
        seconds[name] = (time.perf_counter() - t) / kw["max_steps"]
    print(
        f"\ntiny model, batch 2, 5 labels each: {seconds['plain'] * 1e3:.1f} ms/step plain, "
        f"{seconds['distill'] * 1e3:.1f} ms/step with distillation ({seconds['distill'] / seconds['plain']:.2f}x)"
    )
