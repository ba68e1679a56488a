"""Instruction tuning on (prompt, answer) examples: loss on the answer tokens only, length-bucketed batches; the
objectives an example may add (ranking against a rejected answer, distillation of soft targets)."""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from errwise import distributed
from errwise.evaluate import shared_prefix
from errwise.model import _forward_with_cache, build_labels, label_ids, run_prefix, score_candidates
from errwise.progress import progress
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
    distill_loss: float = 0.0
    """The distillation term's share of `loss` (weighted, mean over the steps); 0 when no example carries targets."""


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


def collate(encoded: list[tuple[list[int], list[int]]], pad_id: int, shared: int = 0) -> dict[str, torch.Tensor]:
    """Left-padded batch: every answer ends at the last position, so the loss needs the logits of the last few
    positions only (`answer_width`), not of the whole prompt. `shared`: the rows' first `shared` tokens are the same
    (the instruction every prompt starts with): they are kept once, as `prefix`, and the rows hold the rest, laid
    out after it as prefix, left padding, rest (`answer_nll` runs the prefix once for the batch)."""
    prefix = encoded[0][0][:shared]
    encoded = [(ids[shared:], lab[shared:]) for ids, lab in encoded]
    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(encoded):
        input_ids[i, width - len(ids) :] = torch.tensor(ids)
        labels[i, width - len(lab) :] = torch.tensor(lab)
        mask[i, width - len(ids) :] = 1
    answer_width = max(sum(t != -100 for t in lab) for _, lab in encoded)
    batch = {"input_ids": input_ids, "labels": labels, "attention_mask": mask, "answer_width": answer_width}
    if prefix:
        batch["prefix"] = torch.tensor([prefix])
    return batch


def answer_nll(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer-token negative log-likelihood of each row and its number of answer tokens, (batch,) each.

    The vocabulary projection (a fifth of a 135M model's FLOPs) and the softmax run on the answer positions
    only (`logits_to_keep`), which leaves the loss unchanged and cuts a CPU step by about a quarter. A batch with a
    `prefix` (`collate`'s `shared`) runs it once and the rows on its keys/values, the same loss in fewer tokens."""
    mask = batch["attention_mask"]
    keep = batch["answer_width"] + 1  # the position before the answer predicts its first token
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    prefix = batch.get("prefix")
    if prefix is None:
        out = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions, logits_to_keep=keep)
    else:  # the shared prefix once (batch 1), its keys/values expanded to every row; gradients flow back through it
        past = run_prefix(model, prefix).cache(len(mask))
        mask = torch.cat([mask.new_ones((len(mask), prefix.shape[1])), mask], dim=1)
        out, _ = _forward_with_cache(
            model,
            past,
            input_ids=batch["input_ids"],
            attention_mask=mask,
            position_ids=positions + prefix.shape[1],
            logits_to_keep=keep,
        )
    logits = out.logits  # (batch, keep, vocab)
    logits, labels = logits[:, :-1].float(), batch["labels"][:, -keep + 1 :]  # position t predicts token t+1
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    return nll.sum(1), (labels != -100).sum(1).clamp(min=1)


def encode_segments(tok: PreTrainedTokenizerBase, ex: Example, max_length: int) -> tuple[list[int], list[list[int]]]:
    """An example as its prompt (truncated as `encode` truncates it) and the answers scored after it, each seeing the
    prompt alone: its answer, then its rejected answer (ranking objective), then its distillation labels."""
    ids, labels = encode(tok, ex, max_length)
    n = labels.count(-100)
    segments = [ids[n:]]
    if ex.rejected and ex.rank_weight > 0:
        segments.append(label_ids(tok, ex.rejected))
    if ex.distill and ex.distill_weight > 0:
        segments += [label_ids(tok, name) for name, _ in ex.distill]
    return ids[:n], segments


def collate_segments(rows: list[tuple[list[int], list[list[int]]]], pad_id: int) -> dict:
    """Left-padded rows of prompt + segments, one prompt for all of its answers: a 4-D mask lets each segment's
    tokens see the prompt and the earlier tokens of their own segment only, at positions prompt length + offset,
    so each segment is scored as if it followed the prompt alone (the tree attention of `model.score_candidates`,
    with gradients). Per segment token: `row`, `source` (the kept position whose logits predict it: the prompt's
    last one for a segment's first token), `target` (the token) and `segment` (its segment's index, row by row)."""
    width = max(len(p) + sum(map(len, segs)) for p, segs in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    allowed = torch.eye(width, dtype=torch.bool).repeat(len(rows), 1, 1)  # (rows, query, key); padding sees itself
    row, source, target, segment = [], [], [], []
    for b, (prompt, segs) in enumerate(rows):
        n = len(prompt)
        at = width - n - sum(map(len, segs))  # the prompt's first column
        ids[b, at : at + n] = torch.tensor(prompt)
        positions[b, at : at + n] = torch.arange(n)
        allowed[b, at : at + n, at : at + n] = torch.ones(n, n, dtype=torch.bool).tril()
        prompt_cols, at = slice(at, at + n), at + n
        for seg in segs:
            k = len(seg)
            ids[b, at : at + k] = torch.tensor(seg)
            positions[b, at : at + k] = n + torch.arange(k)
            allowed[b, at : at + k, prompt_cols] = True
            allowed[b, at : at + k, at : at + k] = torch.ones(k, k, dtype=torch.bool).tril()
            row += [b] * k
            source += [prompt_cols.stop - 1, *range(at, at + k - 1)]
            target += seg
            segment += [segment[-1] + 1 if segment else 0] * k
            at += k
    keep = width - min(source)  # the vocabulary projection runs on the last `keep` positions only
    return {
        "input_ids": ids,
        "allowed": allowed,
        "position_ids": positions,
        "keep": keep,
        "row": torch.tensor(row),
        "source": torch.tensor(source) - (width - keep),
        "target": torch.tensor(target),
        "segment": torch.tensor(segment),
        "tokens": sum(len(p) + sum(map(len, segs)) for p, segs in rows),
    }


def segment_nll(model: PreTrainedModel, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed negative log-likelihood of every segment of `collate_segments`' rows and its number of tokens,
    (segments,) each: the score prediction ranks candidates by (`score="sum"`), negated, for every answer at once."""
    dtype = next(model.parameters()).dtype
    mask = torch.zeros(batch["allowed"].shape, dtype=dtype, device=batch["allowed"].device)
    mask.masked_fill_(~batch["allowed"], torch.finfo(dtype).min)
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=mask[:, None],
        position_ids=batch["position_ids"],
        logits_to_keep=batch["keep"],
    ).logits  # (rows, keep, vocab)
    logits = logits[batch["row"], batch["source"]].float()  # (segment tokens, vocab)
    nll = torch.nn.functional.cross_entropy(logits, batch["target"], reduction="none")
    n_segments = int(batch["segment"][-1]) + 1
    total = nll.new_zeros(n_segments).index_add(0, batch["segment"], nll)
    return total, torch.bincount(batch["segment"], minlength=n_segments)


def rank_losses(nll_answer: torch.Tensor, nll_rejected: torch.Tensor) -> torch.Tensor:
    """Pairwise ranking loss -log sigmoid(log p(answer) - log p(rejected)) on summed answer log-probabilities:
    the score prediction ranks candidates by (`score="sum"`), so a positive margin is a corrected answer."""
    return torch.nn.functional.softplus(nll_answer - nll_rejected)


def distill_losses(nll: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(targets || softmax(-nll / temperature)) over the last dimension: `nll` (..., k) the summed negative
    log-likelihoods of k labels (prediction's scores, negated), `targets` (..., k) their target probabilities,
    taken at the same temperature. As LwF (Li & Hoiem, 2016) writes it: no temperature-squared factor."""
    log_q = torch.log_softmax(-nll / temperature, dim=-1)
    return (targets * (targets.clamp(min=1e-30).log() - log_q)).sum(-1)


@torch.no_grad()
def soft_targets(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    examples: list[Example],
    names: list[str],
    *,
    top_k: int,
    temperature: float,
    max_length: int,
    batch_size: int = 16,
) -> list[tuple[tuple[str, float], ...]]:
    """The model's view of each example's prompt, as `Example.distill` targets: its `top_k` best labels among
    `names` and their softmax over those k at `temperature`. The scores are prediction's exact ones (summed label
    log-probabilities, every label scored in full) after the very prompt ids training scores the labels after."""
    labels = build_labels(tok, names)
    prompts = [encode_segments(tok, ex, max_length)[0] for ex in examples]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[tuple[tuple[str, float], ...]] = [()] * len(examples)
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        _, scores = score_candidates(model, [prompts[i] for i in idx], labels, pad_id=tok.pad_token_id, exhaustive=True)
        top, best = torch.sort(scores, dim=1, descending=True, stable=True)  # ties: the lower index first
        probs = torch.softmax(top[:, :top_k].double() / temperature, dim=1)
        for i, js, ps in zip(idx, best[:, :top_k].tolist(), probs.tolist()):
            out[i] = tuple((names[j], p) for j, p in zip(js, ps))
    return out


def packed_loss(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    examples: list[Example],
    weights: torch.Tensor,
    max_length: int,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """`train`'s summed loss of a batch (weighted cross-entropy, ranking, distillation) from one row per example,
    its prompt once and its answers as segments (`collate_segments`); returns it, its distillation part, and the
    tokens processed."""
    rows = [encode_segments(tok, ex, max_length) for ex in examples]
    device = next(model.parameters()).device
    batch = collate_segments(rows, tok.pad_token_id)
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    nll, n = segment_nll(model, batch)  # (segments,)
    loss = distill = nll.new_zeros(())
    at = 0  # the example's first segment: its answer
    for ex, w, (_, segments) in zip(examples, weights.tolist(), rows):
        loss = loss + w * nll[at] / n[at]  # mean answer-token cross-entropy, as in `train`
        j = at + 1
        if ex.rejected and ex.rank_weight > 0:
            loss = loss + ex.rank_weight * rank_losses(nll[at], nll[j])
            j += 1
        if ex.distill and ex.distill_weight > 0:
            p = torch.tensor([q for _, q in ex.distill], device=device)
            distill = distill + ex.distill_weight * distill_losses(nll[j : j + len(p)], p, ex.distill_temperature)
        at += len(segments)
    return loss + distill, distill, batch["tokens"]


@contextlib.contextmanager
def adapters_in_weight_dtype(model: PreTrainedModel) -> Iterator[None]:
    """The forward with LoRA adapters computed in the frozen weights' bf16 rather than in fp32.

    PEFT keeps the trainable adapters in fp32 (the optimiser's master copy) and casts every adapted layer's input
    to fp32 and the sum back: on CPU those casts, fp32 additions and skinny fp32 products were a quarter of a bf16
    step (docs/speed.md, "Training"). Under autocast the small adapter matrices are cast to bf16 instead (each
    call: `cache_enabled=False`, since the optimiser changes them every step) and the activations stay in bf16, as
    in the Hugging Face recipe with `bf16=True`; gradients reach the fp32 adapters through the casts. A no-op for
    fp32 models, models without adapters, and fp16 (whose range autocast does not guard here)."""
    frozen = next((p for p in model.parameters() if not p.requires_grad and p.is_floating_point()), None)
    peft = hasattr(model, "peft_config")
    if frozen is None or frozen.dtype != torch.bfloat16 or not peft:
        yield
        return
    from peft.helpers import disable_input_dtype_casting

    with (
        torch.autocast(frozen.device.type, dtype=torch.bfloat16, cache_enabled=False),
        disable_input_dtype_casting(model),
    ):
        yield


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
    share_prefix: bool = True,
) -> TrainStats:
    """AdamW with linear warmup and decay, a fresh optimiser per call (per task), as CRE codebases do.

    The budget is `epochs` passes over `examples`, or exactly `max_steps` optimiser steps (the loop sets them
    for equal-budget comparisons and the consolidation round); the data are cycled. `on_step` gets each step's
    loss (experiment tracking). `share_prefix`: the tokens every prompt starts with run once per batch (`collate`);
    False: every row in full (the reference).
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
    # The instruction every prompt starts with runs once per batch (single process: DDP wants one forward a step).
    prompts = [ids[: lab.count(-100)] for ids, lab in list(encoded) + list(rejected.values())]
    shared = len(shared_prefix(prompts)) if share_prefix and distributed.world() == 1 else 0
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
    total_loss, total_distill, tokens = 0.0, 0.0, 0
    bar = progress(range(steps), desc=desc, leave=False)
    for step in bar:
        if not batches:
            batches = bucketed_batches([len(ids) for ids, _ in encoded], batch_size, rng)
        idx = batches.pop()
        local, w = idx[rank::world], weights[idx[rank::world]]
        stand_in = not local
        if stand_in:  # fewer examples than processes: a zero-weight stand-in keeps the all-reduce in step
            local, w = idx[:1], torch.zeros(1)
        distill = torch.zeros(())
        if not stand_in and any(examples[i].distill and examples[i].distill_weight > 0 for i in local):
            # Distillation targets: each example's prompt runs once, followed by all of its answers.
            with adapters_in_weight_dtype(model):
                loss, distill, n_tokens = packed_loss(net, tok, [examples[i] for i in local], w, max_length)
        else:
            pairs = [] if stand_in else [j for j, i in enumerate(local) if i in rejected]
            rows = [encoded[i] for i in local] + [rejected[local[j]] for j in pairs]
            batch = collate(rows, tok.pad_token_id, shared)
            n_tokens = 0 if stand_in else int(batch["attention_mask"].sum()) + len(rows) * shared
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            with adapters_in_weight_dtype(model):
                nll, n = answer_nll(net, batch)  # (rows,)
            losses = nll[: len(local)] / n[: len(local)]  # mean answer-token cross-entropy per example
            loss = (losses * w.to(device)).sum()
            if pairs:
                rank_w = torch.tensor([examples[local[j]].rank_weight for j in pairs], device=device)
                loss = loss + (rank_losses(nll[pairs], nll[len(local) :]) * rank_w).sum()
        # The weighted mean over the global batch; DDP averages gradients over processes, hence `* world`.
        loss = loss * world / len(idx)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step_loss = distributed.all_sum(loss.item()) / world
        total_loss += step_loss
        total_distill += distributed.all_sum(distill.item()) / len(idx)
        if on_step is not None:
            on_step(step_loss)
        tokens += int(distributed.all_sum(n_tokens))
        bar.set_postfix(loss=f"{total_loss / (step + 1):.3f}")
    model.eval()
    return TrainStats(steps, len(examples), tokens, total_loss / steps, kinds, total_distill / steps)
