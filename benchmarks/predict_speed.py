"""Prediction throughput of `errwise predict` (probabilities: every label scored in full) beside evaluation's pruned
exact search, for a run, extractor or export folder. Prints figures; asserts nothing.

    python benchmarks/predict_speed.py runs/demo                 # the source's relations and test sentences
    python benchmarks/predict_speed.py runs/demo --fewrel 80     # the same model among FewRel's first 80 relations
    python benchmarks/predict_speed.py runs/demo --requests 5 --per-request 4   # a server's small requests

Default: the source's relations, and its held-out test sentences (repeated up to --n). `--fewrel N`: a synthetic
extractor, the source's model among the first N relation names of FewRel (../shared/data/fewrel, or
--fewrel-path) on FewRel sentences of those relations: the full scoring costs the same whatever the model knows,
the pruned search is slower for a model never trained on those names (it prunes less). Prints speed, and the
agreement of the two paths' top answers. Both paths use the source's batch size and length-sorted batches.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from errwise.data.formats import load_corpus
from errwise.evaluate import predict
from errwise.extractor import Extractor, score_all

DEFAULT_FEWREL = Path(__file__).resolve().parents[2] / "shared" / "data" / "fewrel"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source")
    ap.add_argument("--n", type=int, default=160, help="sentences")
    ap.add_argument("--fewrel", type=int, help="candidates: FewRel's first N relations, with their sentences")
    ap.add_argument("--fewrel-path", default=str(DEFAULT_FEWREL))
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--requests", type=int, help="instead: this many small predict calls, side by side")
    ap.add_argument("--per-request", type=int, default=4, help="sentences per call of --requests [4]")
    args = ap.parse_args()
    ext = Extractor.load(args.source)
    if args.fewrel:
        corpus = load_corpus("fewrel", args.fewrel_path)
        cands = list(corpus.relations[: args.fewrel])
        groups = [corpus.by_relation()[r.id] for r in cands]
        xs = [g[i] for i in range(args.n) for g in groups][: args.n]  # round robin over the relations
    else:
        cands = list(ext.relations)
        _, test = ext._memory_and_test()
        xs = (test * (args.n // len(test) + 1))[: args.n]
    e, bs = ext.cfg.eval, args.batch_size or ext.cfg.eval.batch_size
    kw = {"batch_size": bs, "score": e.score, "list_candidates": e.list_candidates, "max_length": 256}
    if args.requests:
        return requests(ext, xs, cands, kw, args.requests, args.per_request)
    score_all(ext.model, ext.tok, xs[:bs], cands, **kw)  # warm-up
    t = time.perf_counter()
    full = score_all(ext.model, ext.tok, xs, cands, **kw)
    t_full = time.perf_counter() - t
    t = time.perf_counter()
    pruned = predict(ext.model, ext.tok, xs, cands, **kw)
    t_pruned = time.perf_counter() - t
    agree = sum(cands[i].id == p for i, p in zip(full.argmax(1).tolist(), pruned))
    print(f"{len(xs)} sentences, {len(cands)} candidate relations, batch {bs}, {torch.get_num_threads()} thread(s)")
    print(f"errwise predict (every label scored, probabilities): {len(xs) / t_full:.1f} sentences/s")
    print(f"evaluation's pruned exact search (top-1 only):       {len(xs) / t_pruned:.1f} sentences/s")
    print(f"top-1 agreement: {agree}/{len(xs)}")


def requests(ext: Extractor, xs, cands, kw, n: int, per: int) -> None:
    """Seconds per small call: Extractor.predict (its merged copy made once, on the first call) beside scoring the
    model itself (on CPU, inference_copy merges the adapters in every call, as every request did before)."""
    calls = [xs[(i * per) % len(xs) :][:per] for i in range(n)]
    rows = []
    for name, fn in (
        ("score_all(model), a merge per call", lambda c: score_all(ext.model, ext.tok, c, cands, **kw)),
        ("Extractor.predict, merged once", lambda c: ext.predict(c, top_k=len(cands))),
    ):
        times = []
        for c in calls:
            t = time.perf_counter()
            fn(c)
            times.append(time.perf_counter() - t)
        rows.append((name, times))
    print(f"{n} calls of {per} sentences, {len(cands)} candidate relations, {torch.get_num_threads()} thread(s)")
    for name, times in rows:
        rest = sorted(times[1:]) or times
        print(f"{name:38s} first {times[0]:.2f} s, then median {rest[len(rest) // 2]:.2f} s a call")


if __name__ == "__main__":
    main()
