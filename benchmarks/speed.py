"""Speed and memory of training and prediction, for a model on this machine. Prints figures; asserts nothing.

    python benchmarks/speed.py                                  # offline SmolLM2-135M, FewRel from ../shared
    python benchmarks/speed.py --model Qwen/Qwen2.5-0.5B-Instruct --random-init   # speed needs no weights

Measures: training tokens/s (LoRA, batch 8, the plain instruction), prediction instances/s among 8, 40 and
80 candidate relations (exact pruned scoring; first-token ranking with shared first tokens resolved exactly,
eval.search first_token, which is not exact: its agreement with the reference and both paths' correct answers
are printed; the exhaustive reference; all side by side with the cheapest forward pass over the same prompts
alone: last-position logits only), and peak memory (RSS on CPU, allocator peak on GPU). With a peak FLOP/s
(known GPUs, or --peak-tflops) it prints model FLOPs utilisation: training counts 4 x (linear-layer
parameters) FLOPs per token for LoRA (forward + activation gradients; the frozen weights get no gradient), 6 x
for full fine-tuning, plus the vocabulary projection where it is computed; prediction counts 2 x per prompt
token. Attention-score FLOPs are left out (short sequences).
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch

from errwise.data.formats import load_corpus
from errwise.evaluate import predict, prompt_ids
from errwise.model import left_pad, load_model, load_tokenizer, pick_device, pick_dtype
from errwise.prompts import plain_example
from errwise.train import train

DEFAULT_FEWREL = Path(__file__).resolve().parents[2] / "shared" / "data" / "fewrel"


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}  # dense bf16


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given:
        return given
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    return None


def linear_params(model) -> tuple[int, int]:
    """(parameters of the transformer blocks' linear layers, of the vocabulary projection)."""
    head = model.get_output_embeddings().weight.numel()
    blocks = sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and "lm_head" not in name and "lora_" not in name
    )
    return blocks, head


def mfu(flops: float, seconds: float, peak: float | None) -> str:
    achieved = flops / seconds / 1e12
    return f"{achieved:.2f} TFLOP/s" + (f", MFU {100 * achieved / peak:.1f}% of {peak:g}" if peak else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-offline")
    ap.add_argument("--random-init", action="store_true", help="random weights of the model's architecture")
    ap.add_argument("--data", default=str(DEFAULT_FEWREL), help="FewRel folder")
    ap.add_argument("--train-steps", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--eval-instances", type=int, default=48)
    ap.add_argument("--eval-batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    ap.add_argument("--adapter", default=None, help="a LoRA checkpoint (run/checkpoints/task_XX): a trained model")
    ap.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU), float32, bfloat16")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device peak (default: known GPUs)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device()
    dtype = pick_dtype(args.dtype, device)
    tok = load_tokenizer(args.model)
    if args.random_init:
        from transformers import AutoConfig, AutoModelForCausalLM

        from errwise.model import pick_attention, prepare_model, resolve_model_path

        cfg = AutoConfig.from_pretrained(resolve_model_path(args.model))
        attn = pick_attention(device, dtype)
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=attn)
        model = prepare_model(model.to(device), lora=True)
    else:
        adapter = Path(args.adapter) if args.adapter else None
        model = load_model(args.model, device=device, dtype=dtype, lora=True, adapter=adapter)
    corpus = load_corpus("fewrel", args.data)
    by_rel = corpus.by_relation()
    rels = list(corpus.relations)
    print(
        f"model {args.model}{' (random init)' if args.random_init else ''}"
        f"{f' + adapter {args.adapter}' if args.adapter else ''} on {device} {dtype}, "
        f"{model.config._attn_implementation} attention, {torch.get_num_threads()} threads"
    )

    # Training throughput: the plain instruction on FewRel sentences.
    examples = [plain_example(x, corpus.relation(x.relation)) for r in rels[:8] for x in by_rel[r.id][:16]]
    train(
        model,
        tok,
        examples[: args.batch_size],
        epochs=1,
        max_steps=1,
        batch_size=args.batch_size,
        lr=1e-4,
        weight_decay=0.0,
        warmup_ratio=0.0,
        max_length=256,
        seed=0,
    )  # warm-up
    t = time.time()
    stats = train(
        model,
        tok,
        examples,
        epochs=1,
        max_steps=args.train_steps,
        batch_size=args.batch_size,
        lr=1e-4,
        weight_decay=0.0,
        warmup_ratio=0.0,
        max_length=256,
        seed=0,
    )
    dt = dt_train = time.time() - t
    peak = peak_tflops(device, args.peak_tflops)
    blocks, head = linear_params(model)
    answer_tokens = 4 * args.train_steps * args.batch_size  # a relation name + end token: ~4 positions
    train_flops = 4 * blocks * stats.tokens + 4 * head * answer_tokens
    print(
        f"train: {stats.tokens / dt:,.0f} tokens/s, {dt / stats.steps:.2f} s/step "
        f"(batch {args.batch_size}, {stats.tokens / stats.steps / args.batch_size:.0f} tokens/example), "
        f"{mfu(train_flops, dt, peak)}"
    )

    # Prediction throughput at 8, 40, 80 candidates, next to a forward pass over the same prompts alone.
    pruned_rate = {}
    for n in (8, 40, 80):
        cands = rels[:n]
        insts = [x for r in cands for x in by_rel[r.id][400:]][:: max(1, (len(cands) * 300) // args.eval_instances)]
        insts = insts[: args.eval_instances]
        prompts = prompt_ids(tok, insts, None, 256)
        t = time.time()
        with torch.no_grad():
            for i in range(0, len(prompts), args.eval_batch_size):
                ids, mask = left_pad(prompts[i : i + args.eval_batch_size], tok.pad_token_id)
                model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=1)
        fwd = time.time() - t
        fwd_flops = 2 * blocks * sum(len(p) for p in prompts) + 2 * head * len(prompts)
        row = [f"{n:>2} candidates: forward only {len(insts) / fwd:7.1f} inst/s ({mfu(fwd_flops, fwd, peak)})"]
        preds = {}
        paths = (("pruned", "exact", False), ("first-token", "first_token", False), ("exhaustive", "exact", True))
        for name, search, exhaustive in paths:
            t = time.time()
            preds[name] = predict(
                model, tok, insts, cands, batch_size=args.eval_batch_size, search=search, exhaustive=exhaustive
            )
            dt = time.time() - t
            row.append(f"{name} {len(insts) / dt:7.1f} inst/s ({dt / fwd:4.2f}x forward)")
            if name == "pruned":
                pruned_rate[n] = len(insts) / dt
        agree = ", ".join(
            f"{name} {sum(a == b for a, b in zip(preds[name], preds['exhaustive']))}/{len(insts)}"
            for name in ("pruned", "first-token")
        )
        correct = ", ".join(
            f"{name} {sum(p == x.relation for p, x in zip(preds[name], insts))}"
            for name in ("exhaustive", "first-token")
        )
        print("predict " + " | ".join(row) + f" | agreement with exhaustive: {agree} | correct: {correct}")
    print(f"peak memory: {peak_memory_mb(device):,.0f} MB")

    # One task of the standard FewRel protocol (configs/fewrel.yaml: 1 epoch over 8 x 420 training sentences
    # plus the memory of 10 per old relation, then prediction on 140 test sentences of every seen relation),
    # extrapolated from the figures above at this batch size: the last task (80 relations) is the longest.
    step_s = dt_train / stats.steps
    for t in (1, 10):
        n_train = 8 * 420 + 10 * 8 * (t - 1)
        n_test, cands = 140 * 8 * t, 8 * t
        rate = pruned_rate[min(pruned_rate, key=lambda k: abs(k - cands))]
        train_s = n_train / args.batch_size * step_s
        print(
            f"FewRel task {t} (estimate): train {train_s / 60:.1f} min ({n_train} examples) + evaluation "
            f"{n_test / rate / 60:.1f} min ({n_test} instances, {cands} candidates)"
        )


if __name__ == "__main__":
    main()
