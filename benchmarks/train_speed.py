"""Training speed: errwise's step against the Hugging Face recipe (transformers `Trainer` + PEFT LoRA, loss on the
completion only), the same model, the same examples in the same batches, printed side by side in one run. Prints
figures; asserts nothing.

    python benchmarks/train_speed.py --steps 40                 # both recipes, tokens/s and loss side by side
    python benchmarks/train_speed.py --steps 12 --profile       # plus torch.profiler's table of errwise's steps
    python benchmarks/train_speed.py --recipes hf,errwise-before,errwise   # and errwise's step as it was before

The examples are the first FCRE FewRel 5-shot training sentences of task 1's relations (`../shared/data/fcre/fewrel`,
or --fcre), prompt and answer as errwise trains them; the batches are `train.bucketed_batches`' with the run's seed,
taken in the order `train.train` takes them, so both recipes see identical batches. Each recipe starts from the same
fresh LoRA adapter (seeded), AdamW, linear warmup and decay, gradient clipping at 1.0, batch 8.

The HF recipe is the usual one: right padding (`DataCollatorForSeq2Seq`), labels -100 on the prompt, the model's own
loss (mean over the batch's answer tokens, every position's logits computed). errwise's step: left padding, the
vocabulary projection on the answer positions only, the per-example mean weighted over the batch. Both losses are
reported as each recipe defines it, and then, for the two trained adapters alike, the mean answer-token loss on the
same held-out sentences (`--heldout`): equal loss means equal learning.

Tokens/s counts non-padding tokens (prompt + answer) over the timed steps (all but the first, which allocates), per
second of the process's CPU time (one thread: the work itself, robust to other processes on the machine); the wall
seconds are printed beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from errwise import train as train_module
from errwise.data.formats import load_fcre
from errwise.model import load_model, load_tokenizer
from errwise.prompts import Example, plain_example
from errwise.train import answer_nll, bucketed_batches, collate, encode, train

DEFAULT_FCRE = Path(__file__).resolve().parents[2] / "shared" / "data" / "fcre" / "fewrel"


def examples(folder: Path, n: int, heldout: int) -> tuple[list[Example], list[Example]]:
    """n training examples of task 1 (cluster 7: 10 relations), round-robin over its relations, and `heldout` more."""
    corpus = load_fcre(folder, 5)
    rels = {r.id: r for r in corpus.relations}
    task1 = set(corpus.clusters[7])
    by_rel: dict[str, list] = {r: [] for r in sorted(task1)}
    for inst in corpus.train:
        if inst.relation in task1:
            by_rel[inst.relation].append(inst)
    xs = [plain_example(by_rel[r][k], rels[r]) for k in range(100) for r in by_rel]
    return xs[:n], xs[n : n + heldout]


def batch_order(tok, xs: list[Example], steps: int, batch_size: int, seed: int, max_length: int) -> list[list[int]]:
    """The batches `train.train` takes for these examples, in its order (it pops from the end, refilling by epoch)."""
    rng = random.Random(seed)
    lengths = [len(encode(tok, ex, max_length)[0]) for ex in xs]
    out: list[list[int]] = []
    batches: list[list[int]] = []
    while len(out) < steps:
        if not batches:
            batches = bucketed_batches(lengths, batch_size, rng)
        out.append(batches.pop())
    return out


def elapsed(stamps: list[tuple[float, float]]) -> dict:
    """Wall and CPU seconds from the first step's end to the last's (the process's CPU time: with one thread it is
    the step's work, whatever else runs on the machine; wall time is shown beside it)."""
    return {"wall_s": stamps[-1][0] - stamps[0][0], "seconds": stamps[-1][1] - stamps[0][1]}


def fresh_model(args):
    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    return load_model(args.model, device=torch.device("cpu"), dtype=dtype, lora=True, lora_r=16)


def run_errwise(args, tok, xs, profile: bool = False, before: bool = False) -> dict:
    """errwise's `train`; `before`: as it was before bf16 adapters (`train.adapters_in_weight_dtype`: PEFT's fp32
    adapter path instead) and the shared instruction run once per batch (`share_prefix=False`: every row in full)."""
    model = fresh_model(args)
    saved = getattr(train_module, "adapters_in_weight_dtype", None)
    extra = {"share_prefix": False} if before and "share_prefix" in inspect.signature(train).parameters else {}
    if before and saved is not None:
        train_module.adapters_in_weight_dtype = lambda m: contextlib.nullcontext()
    stamps: list[float] = []
    losses: list[float] = []

    def on_step(loss: float) -> None:
        stamps.append((time.perf_counter(), time.process_time()))
        losses.append(loss)

    prof = None
    if profile:
        prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=False)
        prof.__enter__()
    train(
        model, tok, xs, epochs=1, max_steps=args.steps, batch_size=args.batch_size, lr=args.lr, weight_decay=0.0,
        warmup_ratio=0.1, max_length=args.max_length, seed=args.seed, on_step=on_step, **extra,
    )  # fmt: skip
    if saved is not None:
        train_module.adapters_in_weight_dtype = saved
    if prof is not None:
        prof.__exit__(None, None, None)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile_rows))
    return {"model": model, **elapsed(stamps), "losses": losses}


def run_hf(args, tok, xs, order) -> dict:
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    model = fresh_model(args)
    flat = [i for b in order for i in b]
    rows = []
    for i in flat:
        ids, labels = encode(tok, xs[i], args.max_length)
        rows.append({"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)})
    tok.padding_side = "right"
    stamps: list[float] = []
    losses: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            stamps.append((time.perf_counter(), time.process_time()))

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    class InOrder(Trainer):  # the batches as listed: errwise's, in its order
        def _get_train_sampler(self, train_dataset=None):
            return torch.utils.data.SequentialSampler(rows)

    with tempfile.TemporaryDirectory() as out:
        targs = TrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch_size, learning_rate=args.lr, max_steps=args.steps,
            lr_scheduler_type="linear", warmup_steps=int(0.1 * args.steps), weight_decay=0.0, max_grad_norm=1.0,
            logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, dataloader_num_workers=0,
            remove_unused_columns=False, disable_tqdm=True, seed=args.seed,
        )  # fmt: skip
        collator = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100)
        InOrder(model=model, args=targs, train_dataset=rows, data_collator=collator, callbacks=[Stamp()]).train()
    tok.padding_side = "left"
    return {"model": model, **elapsed(stamps), "losses": losses}


@torch.no_grad()
def heldout_loss(model, tok, xs: list[Example], max_length: int) -> float:
    """Mean answer-token cross-entropy on held-out examples (the same function for both adapters)."""
    model.eval()
    total, count = 0.0, 0
    for k in range(0, len(xs), 16):
        batch = collate([encode(tok, ex, max_length) for ex in xs[k : k + 16]], tok.pad_token_id)
        nll, n = answer_nll(model, batch)
        total, count = total + float(nll.sum()), count + int(n.sum())
    return total / count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fcre", type=Path, default=DEFAULT_FCRE)
    p.add_argument("--model", default="smollm2-135m-offline")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heldout", type=int, default=96)
    p.add_argument("--recipes", default="hf,errwise", help="comma-separated, run in this order")
    p.add_argument("--rounds", type=int, default=1, help="repeat the recipes, order alternating; keep each's fastest")
    p.add_argument("--profile", action="store_true", help="torch.profiler's table of errwise's steps")
    p.add_argument("--profile-rows", type=int, default=25)
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    tok = load_tokenizer(args.model)
    xs, held = examples(args.fcre, args.steps * args.batch_size, args.heldout)
    order = batch_order(tok, xs, args.steps, args.batch_size, args.seed, args.max_length)
    # Non-padding tokens of the timed steps: the same batches for every recipe.
    tokens = sum(len(encode(tok, xs[i], args.max_length)[0]) for b in order[1:] for i in b)
    results: dict[str, dict] = {}
    names = args.recipes.split(",")
    for k in range(args.rounds):  # rounds alternate the order; the fastest round of each recipe is kept
        for name in names if k % 2 == 0 else names[::-1]:
            if name == "hf":
                r = run_hf(args, tok, xs, order)
            else:
                r = run_errwise(args, tok, xs, args.profile, before=name == "errwise-before")
            r["heldout"] = heldout_loss(r.pop("model"), tok, held, args.max_length)
            r["tokens"] = tokens
            rate = r["tokens"] / r["seconds"]
            print(f"round {k + 1} {name}: {rate:.0f} tokens/CPU-s, steps 2-{args.steps}", flush=True)
            if name not in results or r["seconds"] < results[name]["seconds"]:
                results[name] = r
    results = {name: results[name] for name in names}
    print(
        f"\n{args.steps} steps of batch {args.batch_size}, {args.dtype}, {torch.get_num_threads()} thread(s), "
        f"{len(held)} held-out examples, the fastest of {args.rounds} round(s)"
    )
    base = results.get("hf")
    print(
        "| recipe | timed steps | tokens | CPU s | wall s | tokens/s | vs HF | mean train loss | last-10 loss "
        "| held-out loss |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        rate = r["tokens"] / r["seconds"]
        ratio = f"{rate / (base['tokens'] / base['seconds']):.2f}x" if base else "-"
        print(
            f"| {name} | {args.steps - 1} | {r['tokens']:,} | {r['seconds']:.1f} | {r['wall_s']:.1f} | {rate:.0f} "
            f"| {ratio} | "
            f"{statistics.mean(r['losses']):.4f} | {statistics.mean(r['losses'][-10:]):.4f} | {r['heldout']:.4f} |"
        )


if __name__ == "__main__":
    main()
