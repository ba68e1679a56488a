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


def test_bf16_adapters_match_peft_s_fp32_path_and_see_every_update(tiny_model_dir, tiny):
    """A bf16 model with fp32 LoRA adapters: under `adapters_in_weight_dtype` the answer losses equal PEFT's fp32
    adapter path to bf16 precision, the adapters stay fp32 and get gradients, and training with it follows the fp32
    path step by step (a cast cached across steps would freeze the adapters at their first values)."""
    from errwise.model import load_model
    from errwise.train import adapters_in_weight_dtype

    _, tok = tiny
    torch.manual_seed(0)
    model = load_model(str(tiny_model_dir), device=torch.device("cpu"), dtype=torch.bfloat16, lora=True, lora_r=4)
    for name, p in model.named_parameters():  # non-zero B: the adapters change the output from the start
        if "lora_" in name:
            torch.nn.init.normal_(p, std=0.3)
    batch = collate([encode(tok, Example(PROMPT, a), 64) for a in (GOLD, WRONG)], tok.pad_token_id)
    ids = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        plain = model(**ids).logits.float()
        with adapters_in_weight_dtype(model):
            fast = model(**ids).logits
        model.base_model.disable_adapter_layers()
        without = model(**ids).logits.float()
        model.base_model.enable_adapter_layers()
    assert fast.dtype == torch.bfloat16  # the adapted layers' sums stayed in bf16
    real = batch["attention_mask"].bool()  # padding positions are left out
    effect = (plain - without)[real].abs().mean()
    assert effect > 10 * plain[real].abs().mean() * 2**-8  # the adapters move the logits far beyond bf16's rounding
    assert (fast.float() - plain)[real].abs().mean() < 0.1 * effect
    with adapters_in_weight_dtype(model):
        answer_nll(model, batch)[0].sum().backward()
    lora = [p for n, p in model.named_parameters() if "lora_" in n]
    assert all(p.dtype == torch.float32 and p.grad is not None for p in lora)
    assert any(p.grad.abs().sum() > 0 for p in lora)
    model.zero_grad()

    with torch.no_grad(), adapters_in_weight_dtype(model):  # an update inside one context is seen at once
        before = model(**ids).logits.float()
        for p in lora:
            p.mul_(1.5)
        after = model(**ids).logits.float()
    assert (after - before)[real].abs().mean() > 0.05 * effect  # a cast cached by autocast would give 0
    seen: list[float] = []
    train(
        model, tok, [Example(PROMPT, GOLD)], epochs=1, max_steps=6, batch_size=1, lr=1e-2, weight_decay=0.0,
        warmup_ratio=0.0, max_length=64, seed=0, on_step=seen.append,
    )  # fmt: skip
    assert seen[-1] < seen[0] - 0.1  # and training through it trains the fp32 adapters
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "lora_" in n)


@pytest.mark.parametrize("rank_pairs", [False, True])
def test_the_shared_instruction_once_per_batch_gives_the_same_loss_and_gradients(tiny_model_dir, tiny, rank_pairs):
    """`collate(..., shared)`: the prompts' common first tokens run once and every row attends to their keys/values
    (prefix, left padding, rest): the answer losses and the adapters' gradients equal the full rows' (fp32), and
    `train` counts the same tokens and ends at the same loss with and without it."""
    from errwise.evaluate import shared_prefix
    from errwise.model import load_model

    _, tok = tiny
    torch.manual_seed(0)
    model = load_model(str(tiny_model_dir), device=torch.device("cpu"), dtype=torch.float32, lora=True, lora_r=4)
    for name, p in model.named_parameters():
        if "lora_" in name:
            torch.nn.init.normal_(p, std=0.3)
    prompts = [
        PROMPT,
        "What is the relation of the head to the tail?\nSentence: Ana Velk works for Lisbon Bank .\nHead: Ana Velk\n"
        "Tail: Lisbon Bank\nRelation:",
        "What is the relation of the head to the tail?\nSentence: Bo , the son of Al , slept .\nHead: Bo\nTail: Al\n"
        "Relation:",
    ]
    prompts[0] = "What is the relation of the head to the tail?\n" + PROMPT
    exs = [Example(p, a, rejected=WRONG if rank_pairs else "", rank_weight=1.0 if rank_pairs else 0.0)
           for p, a in zip(prompts, [GOLD, "employer", "father"])]  # fmt: skip
    rows = [encode(tok, ex, 64) for ex in exs]
    if rank_pairs:
        rows += [encode(tok, Example(ex.prompt, ex.rejected), 64) for ex in exs]
    shared = len(shared_prefix([ids[: lab.count(-100)] for ids, lab in rows]))
    assert shared >= 8  # the instruction's tokens

    def loss_and_grads(k: int):
        model.zero_grad()
        nll, n = answer_nll(model, collate(rows, tok.pad_token_id, k))
        nll.sum().backward()
        return nll.detach(), n, [p.grad.clone() for n_, p in model.named_parameters() if "lora_" in n_]

    full, n_full, g_full = loss_and_grads(0)
    once, n_once, g_once = loss_and_grads(shared)
    assert "prefix" in collate(rows, tok.pad_token_id, shared) and n_once.tolist() == n_full.tolist()
    assert torch.allclose(once, full, atol=1e-4)
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(g_once, g_full))
    model.zero_grad()

    def run(share: bool):
        m = copy.deepcopy(model)
        return train(
            m, tok, exs, epochs=1, max_steps=4, batch_size=3, lr=1e-2, weight_decay=0.0, warmup_ratio=0.0,
            max_length=64, seed=0, share_prefix=share,
        )  # fmt: skip

    a, b = run(True), run(False)
    assert a.tokens == b.tokens and a.loss == pytest.approx(b.loss, abs=1e-4)
