"""Exact class-incremental evaluation on FCRE FewRel test sentences among all 80 relations: sentences per second (of
wall time, and of the process's CPU time: robust to other processes on the cores) of the prompts' forward alone and
of the exact prediction, and the predictions, for comparing code versions and
dtypes side by side. Prints figures; asserts nothing.

    python benchmarks/eval_speed.py --n 400 --dtype bfloat16 --adapter RUN/checkpoints/task_00 --save new.json
    PYTHONPATH=/path/to/old/checkout/src python benchmarks/eval_speed.py ... --save old.json   # the same, older code
    python benchmarks/eval_speed.py --agree old.json new.json                                  # agreement counts

The sentences are the first N lines of the FCRE FewRel 5-shot test file (`../shared/data/fcre/fewrel`, or
--fcre); the candidates are the 80 relations. Written against the API every version since 4885b95 has
(`errwise.evaluate.candidate_scores`), so an older checkout runs it unchanged; where the code shares the prompts'
common prefix and merges LoRA for inference, the prompt-only forward is measured the same way.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from errwise import evaluate
from errwise.data.types import Relation, RelationInstance
from errwise.model import _forward_with_cache, left_pad, load_model, load_tokenizer

DEFAULT_FCRE = Path(__file__).resolve().parents[2] / "shared" / "data" / "fcre" / "fewrel"


def fcre_test(folder: Path, n: int) -> tuple[list[RelationInstance], list[Relation]]:
    """The first n test instances of the 5-shot split and the 80 relations, read directly (old checkouts have no
    FCRE reader)."""
    names = (folder / "relation_name.txt").read_text().splitlines()
    relations = [Relation(str(i + 1), name.strip()) for i, name in enumerate(names)]
    xs = []
    for k, line in enumerate((folder / "5shot" / "test_0.txt").read_text().splitlines()[:n]):
        f = line.split("\t")
        head, tail = [int(p) for p in f[4].split()], [int(p) for p in f[6].split()]
        span = lambda ps: (min(ps), max(ps) + 1)  # noqa: E731
        xs.append(RelationInstance(f"test/{k}", tuple(f[2].split(" ")), span(head), span(tail), f[0]))
    return xs, relations


@torch.no_grad()
def prompt_forward(model, tok, prompts: list[list[int]], batch_size: int) -> None:
    """The prompts' forward alone (the floor of any exact search), length-sorted batches as evaluation has them,
    with the shared prefix and merged adapters where this version of the code has them."""
    inference = getattr(evaluate, "inference_copy", None)
    share = getattr(evaluate, "shared_prefix", None)
    with inference(model) if inference else _same(model) as m:
        shared = share(prompts) if share else []
        prefix = evaluate.encode_prefix(m, shared) if shared else None
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for start in range(0, len(order), batch_size):
            ids, mask = left_pad(
                [prompts[i][len(shared) :] for i in order[start : start + batch_size]], tok.pad_token_id
            )
            positions = (mask.cumsum(1) - 1).clamp(min=0)
            past = None
            if prefix is not None:
                past = prefix.cache(len(ids))
                mask = torch.cat([mask.new_ones((len(ids), prefix.length)), mask], dim=1)
                positions = positions + prefix.length
            _forward_with_cache(m, past, input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1)


class _same:
    def __init__(self, model):
        self.model = model

    def __enter__(self):
        return self.model.eval()

    def __exit__(self, *exc):
        return False


def _quantise_inference_copies() -> None:
    """Every inference copy of the model becomes an fp32 copy with int8 dynamically quantised linear layers
    (weights per tensor, activations per batch): the probe of int8 evaluation (docs/speed.md)."""
    import contextlib
    import copy
    import warnings

    real = evaluate.inference_copy
    warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*deprecated")

    @contextlib.contextmanager
    def int8_copy(model):
        with real(model) as m:
            linear = {torch.nn.Linear}
            yield torch.ao.quantization.quantize_dynamic(copy.deepcopy(m).float(), linear, dtype=torch.qint8).eval()

    evaluate.inference_copy = int8_copy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400, help="test sentences")
    ap.add_argument("--fcre", default=str(DEFAULT_FCRE), help="the FCRE FewRel folder")
    ap.add_argument("--model", default="smollm2-135m-offline")
    ap.add_argument("--adapter", help="a LoRA checkpoint (RUN/checkpoints/task_XX); without: fresh adapters")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--search-batches",
        type=int,
        help="batches searched together (candidate_scores' search_batches; versions that have it); default: its own",
    )
    ap.add_argument(
        "--int8",
        action="store_true",
        help="a probe: the merged inference copy's linear layers quantised to int8 (torch.ao dynamic, from fp32)",
    )
    ap.add_argument("--skip-forward", action="store_true", help="time the exact prediction only")
    ap.add_argument("--save", help="write the predictions (JSON) here")
    ap.add_argument("--profile", type=int, default=0, help="also print the N costliest operators of the prediction")
    ap.add_argument("--agree", nargs=2, metavar=("A", "B"), help="compare two saved prediction files and exit")
    args = ap.parse_args()
    if args.agree:
        a, b = (json.loads(Path(p).read_text()) for p in args.agree)
        same = sum(x == y for x, y in zip(a["pred"], b["pred"]))
        acc = [sum(p == g for p, g in zip(d["pred"], d["gold"])) / len(d["gold"]) for d in (a, b)]
        print(f"agreement: {same}/{len(a['pred'])} ({100 * same / len(a['pred']):.2f} %)")
        print(f"accuracy: {100 * acc[0]:.2f} % ({a['label']}) vs {100 * acc[1]:.2f} % ({b['label']})")
        return
    torch.set_num_threads(args.threads)
    if args.int8:
        _quantise_inference_copies()
    xs, relations = fcre_test(Path(args.fcre), args.n)
    tok = load_tokenizer(args.model)
    adapter = Path(args.adapter) if args.adapter else None
    model = load_model(
        args.model, device=torch.device("cpu"), dtype=getattr(torch, args.dtype), lora=True, adapter=adapter
    )
    t = time.perf_counter()
    prompts = evaluate.prompt_ids(tok, xs, None, 256)
    tokenise = time.perf_counter() - t
    extra = {} if args.search_batches is None else {"search_batches": args.search_batches}
    evaluate.candidate_scores(model, tok, xs[: args.batch_size], relations, batch_size=args.batch_size)  # warm-up
    kind = f"{args.dtype}{' int8' if args.int8 else ''}"
    line = f"{args.n} sentences, 80 candidates, {kind}, batch {args.batch_size}, {args.threads} thread(s)"
    line += f", search_batches {args.search_batches}" if extra else ""
    if not args.skip_forward:
        t, c = time.perf_counter(), time.process_time()
        prompt_forward(model, tok, prompts, args.batch_size)
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        line += f"; prompt-only forward {args.n / wall:.2f} sentences/s ({args.n / cpu:.2f} per CPU second)"
    t, c = time.perf_counter(), time.process_time()
    best, _ = evaluate.candidate_scores(model, tok, xs, relations, batch_size=args.batch_size, **extra)
    exact, cpu = time.perf_counter() - t, time.process_time() - c
    print(
        f"{line}; exact prediction {args.n / exact:.2f} sentences/s ({args.n / cpu:.2f} per CPU second); "
        f"tokenisation {1e3 * tokenise / args.n:.2f} ms/sentence"
    )
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            evaluate.candidate_scores(model, tok, xs, relations, batch_size=args.batch_size, **extra)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile))
    if args.save:
        pred = [relations[b].id for b in best.tolist()]
        label = f"{kind} {args.save}"
        Path(args.save).write_text(json.dumps({"label": label, "pred": pred, "gold": [x.relation for x in xs]}))


if __name__ == "__main__":
    main()
