"""Instruction tuning on (prompt, answer) examples: loss on the answer tokens only, length-bucketed batches."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from errwise import distributed
from errwise.model import label_ids
from errwise.prompts import Example


@dataclass(frozen=True)
class TrainStats:
    steps: int
    examples: int
    tokens: int
    """Non-padding tokens processed (prompt + answer), for throughput figures."""
    loss: float
    """Mean training loss over the task's steps."""
    kinds: dict[str, int]
    """How many examples of each kind (plain, error, contrastive, ...) were trained on."""


def encode(tok: PreTrainedTokenizerBase, ex: Example, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels (-100 on the prompt) for one example; long prompts lose their oldest tokens."""
    answer = label_ids(tok, ex.answer)
    prompt = tok(ex.prompt)["input_ids"][-(max_length - len(answer)) :]
    return prompt + answer, [-100] * len(prompt) + answer


def bucketed_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffle, sort by length within windows of 16 batches, and shuffle the batches: little padding, random
    order (the usual length-grouped sampler, as in transformers' `group_by_length`)."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 16
    batches = []
    for i in range(0, len(order), window):
        chunk = sorted(order[i : i + window], key=lambda j: lengths[j])
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(encoded: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-padded batch: every answer ends at the last position, so the loss needs the logits of the last few
    positions only (`answer_width`), not of the whole prompt."""
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(encoded):
        input_ids[i, width - len(ids) :] = torch.tensor(ids)
        labels[i, width - len(lab) :] = torch.tensor(lab)
        mask[i, width - len(ids) :] = 1
    answer_width = max(sum(t != -100 for t in lab) for _, lab in encoded)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask, "answer_width": answer_width}


def answer_nll(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer-token negative log-likelihood of each row and its number of answer tokens, (batch,) each.

    The vocabulary projection (a fifth of a 135M model's FLOPs) and the softmax run on the answer positions
    only (`logits_to_keep`), which leaves the loss unchanged and cuts a CPU step by about a quarter."""
    mask = batch["attention_mask"]
    keep = batch["answer_width"] + 1  # the position before the answer predicts its first token
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    logits = model(
        input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions, logits_to_keep=keep
    ).logits  # (batch, keep, vocab)
    logits, labels = logits[:, :-1].float(), batch["labels"][:, -keep + 1 :]  # position t predicts token t+1
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    return nll.sum(1), (labels != -100).sum(1).clamp(min=1)


def rank_losses(nll_answer: torch.Tensor, nll_rejected: torch.Tensor) -> torch.Tensor:
    """Pairwise ranking loss -log sigmoid(log p(answer) - log p(rejected)) on summed answer log-probabilities:
    the score prediction ranks candidates by (`score="sum"`), so a positive margin is a corrected answer."""
    return torch.nn.functional.softplus(nll_answer - nll_rejected)


def step_budget(n_examples: int, epochs: float, batch_size: int) -> int:
    """Optimiser steps of `epochs` passes over `n_examples` examples."""
    return max(1, round(epochs * math.ceil(n_examples / batch_size)))


def train(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    examples: list[Example],
    *,
    epochs: float,
    max_steps: int | None,
    batch_size: int,
    lr: float,
    weight_decay: float,
    warmup_ratio: float,
    max_length: int,
    seed: int,
    desc: str = "train",
    on_step: Callable[[float], None] | None = None,
) -> TrainStats:
    """AdamW with linear warmup and decay, a fresh optimiser per call (per task), as CRE codebases do.

    The budget is `epochs` passes over `examples`, or exactly `max_steps` optimiser steps (the loop sets them
    for equal-budget comparisons and the consolidation round); the data are cycled. `on_step` gets each step's
    loss (experiment tracking).
    """
    kinds: dict[str, int] = {}
    for ex in examples:
        kinds[ex.kind] = kinds.get(ex.kind, 0) + 1
    if not examples:
        return TrainStats(0, 0, 0, float("nan"), kinds)
    rng = random.Random(seed)
    encoded = [encode(tok, ex, max_length) for ex in examples]
    weights = torch.tensor([ex.weight for ex in examples])
    # Examples with a rejected answer also run prompt + rejected answer in the same forward (ranking objective).
    rejected = {
        i: encode(tok, Example(ex.prompt, ex.rejected), max_length)
        for i, ex in enumerate(examples)
        if ex.rejected and ex.rank_weight > 0
    }
    steps = max_steps or step_budget(len(examples), epochs, batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warmup = int(warmup_ratio * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (s + 1) / max(1, warmup) if s < warmup else max(0.0, (steps - s) / max(1, steps - warmup)),
    )
    device = next(model.parameters()).device
    model.train()
    net, rank, world = model, distributed.rank(), distributed.world()
    if world > 1:  # data parallel: each process takes a share of every global batch (weights from process 0)
        net = torch.nn.parallel.DistributedDataParallel(model)
    batches: list[list[int]] = []
    total_loss, tokens = 0.0, 0
    bar = tqdm(range(steps), desc=desc, leave=False, disable=None)
    for step in bar:
        if not batches:
            batches = bucketed_batches([len(ids) for ids, _ in encoded], batch_size, rng)
        idx = batches.pop()
        local, w = idx[rank::world], weights[idx[rank::world]]
        stand_in = not local
        if stand_in:  # fewer examples than processes: a zero-weight stand-in keeps the all-reduce in step
            local, w = idx[:1], torch.zeros(1)
        pairs = [] if stand_in else [j for j, i in enumerate(local) if i in rejected]
        rows = [encoded[i] for i in local] + [rejected[local[j]] for j in pairs]
        batch = collate(rows, tok.pad_token_id)
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        nll, n = answer_nll(net, batch)  # (rows,)
        losses = nll[: len(local)] / n[: len(local)]  # mean answer-token cross-entropy per example
        # The weighted mean over the global batch; DDP averages gradients over processes, hence `* world`.
        loss = (losses * w.to(device)).sum()
        if pairs:
            rank_w = torch.tensor([examples[local[j]].rank_weight for j in pairs], device=device)
            loss = loss + (rank_losses(nll[pairs], nll[len(local) :]) * rank_w).sum()
        loss = loss * world / len(idx)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step_loss = distributed.all_sum(loss.item()) / world
        total_loss += step_loss
        if on_step is not None:
            on_step(step_loss)
        tokens += int(distributed.all_sum(0 if stand_in else int(batch["attention_mask"].sum())))
        bar.set_postfix(loss=f"{total_loss / (step + 1):.3f}")
    model.eval()
    return TrainStats(steps, len(examples), tokens, total_loss / steps, kinds)
