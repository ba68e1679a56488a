"""Zero-shot seen accuracy of a model on a stream, without training: the test instances of the first K tasks
predicted among their relations by the base model, with the run's prompts and exact search. Prints figures only.

    python benchmarks/zero_shot.py configs/cpu_mini_fit.yaml --tasks 2 --data.path ../shared/data/fewrel \
        --model.name ~/.cache/errwise/gguf/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf --model.dtype bfloat16

Any `--section.key value` of `errwise run` is accepted (data, model, eval); training options are ignored.
"""

from __future__ import annotations

import argparse
import resource
import time

from errwise.config import from_dict, load_yaml, parse_value, set_dotted
from errwise.model import load_model, load_tokenizer, pick_device, pick_dtype
from errwise.run import eval_instances, make_stream, predict_with


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", help="YAML preset")
    p.add_argument("--tasks", type=int, default=1, help="predict the test data of the first K tasks")
    args, rest = p.parse_known_args()
    d = load_yaml(args.config)
    for key, value in zip(rest[::2], rest[1::2]):
        key = key.removeprefix("--")
        set_dotted(d, key, parse_value(key, value))
    cfg = from_dict(d, source=args.config)
    stream = make_stream(cfg)
    device = pick_device(cfg.model.device)
    t = time.time()
    tok = load_tokenizer(cfg.model.name)
    model = load_model(cfg.model.name, device=device, dtype=pick_dtype(cfg.model.dtype, device), lora=False)
    load_s = time.time() - t
    k = args.tasks - 1
    seen = tuple(stream.relation(r) for r in stream.seen_relations(k))
    test = eval_instances(stream, k, cfg.eval.split)
    t = time.time()
    preds = predict_with(cfg, model, tok, test, seen, desc="zero-shot")
    correct = sum(p == x.relation for p, x in zip(preds, test))
    print(
        f"{cfg.model.name}: zero-shot seen accuracy after T{args.tasks} {100 * correct / len(test):.1f}% "
        f"({correct}/{len(test)}, {len(seen)} candidates); load {load_s:.1f} s, predict {time.time() - t:.1f} s, "
        f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.1f} GB"
    )


if __name__ == "__main__":
    main()
