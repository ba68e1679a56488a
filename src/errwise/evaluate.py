"""Class-incremental prediction (one relation per instance, always among the given candidates) and embeddings.

Both are length-bucketed: instances are sorted by prompt length so a batch carries little padding.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from errwise.data.types import Relation, RelationInstance
from errwise.model import build_labels, encode_prefix, left_pad, score_candidates
from errwise.progress import progress
from errwise.prompts import plain_prompt


def prompt_ids(
    tok: PreTrainedTokenizerBase,
    instances: Sequence[RelationInstance],
    candidates: Sequence[Relation] | None,
    max_length: int,
    hints: Sequence[str] | None = None,
) -> list[list[int]]:
    cands = list(candidates) if candidates else None
    hints = hints or [""] * len(instances)
    return [tok(plain_prompt(x, cands, h))["input_ids"][-max_length:] for x, h in zip(instances, hints)]


@torch.no_grad()
def predict(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    instances: Sequence[RelationInstance],
    candidates: Sequence[Relation],
    *,
    batch_size: int = 16,
    list_candidates: bool = False,
    score: str = "sum",
    max_length: int = 256,
    search: str = "exact",
    exhaustive: bool = False,
    hints: Sequence[str] | None = None,
    desc: str = "predict",
    bonus: torch.Tensor | None = None,
) -> list[str]:
    """The predicted relation id of every instance, among `candidates` (the relations seen so far); `hints[i]`
    (e.g. retrieved lessons) is put first in instance i's prompt. `search`: `exact` (the best label by full
    scoring) or `first_token` (ranked by the first label token, shared first tokens resolved exactly; see
    `score_candidates`)."""
    best, _ = candidate_scores(
        model,
        tok,
        instances,
        candidates,
        batch_size=batch_size,
        list_candidates=list_candidates,
        score=score,
        max_length=max_length,
        search=search,
        exhaustive=exhaustive,
        hints=hints,
        desc=desc,
        bonus=bonus,
    )
    return [candidates[b].id for b in best.tolist()]


@torch.no_grad()
def score_all(
    model,
    tok,
    instances: Sequence[RelationInstance],
    candidates: Sequence[Relation],
    *,
    batch_size: int = 16,
    score: str = "sum",
    list_candidates: bool = False,
    max_length: int = 256,
    hints: Sequence[str] | None = None,
    desc: str = "predict",
    bonus: torch.Tensor | None = None,
) -> torch.Tensor:
    """Every candidate's exact label score for every instance, (N, C): evaluation's prompts and length-sorted
    batches, each label scored in full (no pruning), so its argmax is evaluation's exact prediction. `bonus` (C,):
    the content-free calibration's, added to every candidate's score as evaluation adds it; `hints` as `predict`'s."""
    _, scores = candidate_scores(
        model,
        tok,
        instances,
        candidates,
        batch_size=batch_size,
        score=score,
        list_candidates=list_candidates,
        max_length=max_length,
        exhaustive=True,
        hints=hints,
        desc=desc,
        bonus=bonus,
    )
    return scores


@torch.no_grad()
def candidate_scores(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    instances: Sequence[RelationInstance],
    candidates: Sequence[Relation],
    *,
    batch_size: int = 16,
    list_candidates: bool = False,
    score: str = "sum",
    max_length: int = 256,
    search: str = "exact",
    exhaustive: bool = False,
    hints: Sequence[str] | None = None,
    desc: str = "predict",
    share_prefix: bool = True,
    search_batches: int = 1,
    bonus: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`predict`'s search, returning the best candidate's index (N,) and every candidate's score (N, C), -inf
    where the search pruned it (`exhaustive=True`: every label scored in full). `share_prefix`: encode the tokens
    every prompt starts with once (False: each prompt in full, the reference path). `search_batches`: the prompts
    are encoded `batch_size` at a time (sorted by length: little padding), and that many such batches are searched
    together (one forward call per search round for all of them; `model.score_candidates`' forward_batch). 4 was
    about 6 % faster per CPU second on FCRE with a trained adapter in bf16 but changed 1 prediction of 200 (bf16
    rounding of differently shaped products; docs/results.md), so the default stays 1: today's predictions.
    `bonus` (C,): added to every candidate's score (calibration: `content_free_bonus`); exact search, sum scores."""
    best = torch.zeros(len(instances), dtype=torch.long)
    scores = torch.empty((len(instances), len(candidates)))
    if not instances:
        return best, scores
    labels = build_labels(tok, [r.name for r in candidates])
    prompts = prompt_ids(tok, instances, candidates if list_candidates else None, max_length, hints)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    with inference_copy(model) as m:
        # The tokens every prompt starts with (the instruction) are encoded once; each batch attends to their cache.
        shared = shared_prefix(prompts) if share_prefix else []
        prefix = encode_prefix(m, shared)
        group = batch_size * max(1, search_batches)
        for start in progress(range(0, len(order), group), desc=desc, leave=False):
            idx = order[start : start + group]
            best[idx], scores[idx] = score_candidates(
                m,
                [prompts[i][len(shared) :] for i in idx],
                labels,
                pad_id=tok.pad_token_id,
                score=score,
                exhaustive=exhaustive,
                first_token=search == "first_token",
                prefix=prefix,
                forward_batch=batch_size,
                bonus=bonus,
            )
    return best, scores


# Inputs with no content (Zhao et al. 2021, "Calibrate before use"): the model's answer distribution on them is its
# prior over the candidate names, whatever the sentence says.
CONTENT_FREE = ("N/A", "[MASK]", "...")


def content_free_instances() -> list[RelationInstance]:
    """One instance per content-free string, the string being the whole sentence, the head and the tail."""
    return [RelationInstance(f"content-free/{i}", (w,), (0, 1), (0, 1), "") for i, w in enumerate(CONTENT_FREE)]


@torch.no_grad()
def content_free_bonus(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    candidates: Sequence[Relation],
    *,
    max_length: int = 256,
    list_candidates: bool = False,
) -> torch.Tensor:
    """(C,) the score bonus of content-free calibration: -log of the candidates' mean probability (normalised over
    the candidates) on prompts whose sentence, head and tail are content-free strings. Added to the summed
    log-probabilities, it divides each candidate's probability by the model's prior for it, so a relation the model
    favours on any input (the task trained last, the one with the most training sentences) loses that favour.
    Shifted so the smallest is 0 (a constant changes no prediction)."""
    _, scores = candidate_scores(
        model, tok, content_free_instances(), candidates,
        list_candidates=list_candidates, max_length=max_length, exhaustive=True, desc="calibrate",
    )  # fmt: skip
    prior = torch.softmax(scores.double(), dim=1).mean(0)  # (C,)
    bonus = -prior.log()
    return (bonus - bonus.min()).float()


def shared_prefix(prompts: Sequence[list[int]]) -> list[int]:
    """The longest token prefix of every prompt, leaving each at least one token of its own (the last one, whose
    logits start the answer); [] for fewer than two prompts (nothing to share)."""
    if len(prompts) < 2:
        return []
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
    return list(first[:n])


@contextmanager
def inference_copy(model: PreTrainedModel) -> Iterator[PreTrainedModel]:
    """`model` in eval mode, with its LoRA adapters merged into a copy of the weights when it has any: one matrix
    per layer instead of three and their additions (PEFT's own merge, in fp32 on CPU), so the forward costs what
    the plain model's does. The model itself is left untouched (merging in place and back in bf16 would not give
    the same weights back). On CPU only: on a GPU the adapters cost little and the copy would double the memory.
    Training mode is restored on exit."""
    training = model.training
    model.eval()
    try:
        if merges_for_inference(model):
            merged = merged_copy(model)
            yield merged
            del merged
        else:
            yield model
    finally:
        model.train(training)


def merges_for_inference(model: PreTrainedModel) -> bool:
    """Whether inference_copy runs `model` through a merged copy: on CPU, with active unmerged LoRA adapters."""
    return next(model.parameters()).device.type == "cpu" and _active_unmerged_adapters(model)


def merged_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A copy of `model` with its LoRA adapters merged into the weights, in eval mode; `model` is not touched.
    Predictions through it are inference_copy's (a caller that predicts many times may keep it)."""
    return copy.deepcopy(model).merge_and_unload().eval()


def _active_unmerged_adapters(model: PreTrainedModel) -> bool:
    """Whether the forward runs adapter layers beside the weights: PEFT adapters, enabled and not merged."""
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    return bool(layers) and not any(m.disable_adapters or m.merged for m in layers)


@torch.no_grad()
def embed(
    model: PreTrainedModel,
    tok: PreTrainedTokenizerBase,
    instances: Sequence[RelationInstance],
    *,
    batch_size: int = 16,
    max_length: int = 256,
) -> np.ndarray:
    """Last-layer hidden state at the prompt's final token (where the answer is decided), (N, hidden)."""
    return last_hidden(model, tok, prompt_ids(tok, instances, None, max_length), batch_size=batch_size)


@torch.no_grad()
def last_hidden(
    model: PreTrainedModel, tok: PreTrainedTokenizerBase, prompts: list[list[int]], *, batch_size: int = 16
) -> np.ndarray:
    """Last-layer hidden state at each token sequence's last token, (N, hidden); length-bucketed batches."""
    model.eval()
    out = np.zeros((len(prompts), model.config.hidden_size), dtype=np.float32)
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = left_pad([prompts[i] for i in idx], tok.pad_token_id)
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        hidden = model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            output_hidden_states=True,
            logits_to_keep=1,
        ).hidden_states[-1][:, -1]  # (batch, hidden)
        out[idx] = hidden.float().cpu().numpy()
    return out
