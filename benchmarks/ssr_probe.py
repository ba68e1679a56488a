"""Can the target model write instances of a relation from its memory instance (self-synthesised rehearsal, SSR)?
A look, not a measurement: for a few FewRel relations drawn at random, the model (no adapter) is shown the relation's
name and description and one instance, and asked for a new sentence with its head and tail; the samples are printed.

    python benchmarks/ssr_probe.py --fewrel ../shared/data/fewrel --relations 4 --samples 2
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch

from errwise.data.formats import load_fewrel
from errwise.model import load_model, load_tokenizer

PROMPT = (
    'Relation: "{name}" ({description}).\nExample: {text}\nHead: {head}\nTail: {tail}\n'
    'Write one new sentence about different people, places or things in which the head is "{name}" the tail. '
    "Answer as three lines: Sentence: ... / Head: ... / Tail: ..."
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fewrel", default="../shared/data/fewrel", help="folder with fewrel80.json and pid2name.json")
    ap.add_argument("--model", default="smollm2-135m-offline")
    ap.add_argument("--relations", type=int, default=4)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    folder = Path(args.fewrel)
    corpus = load_fewrel([folder / "fewrel80.json"], folder / "pid2name.json")
    tok = load_tokenizer(args.model)
    model = load_model(args.model, device=torch.device("cpu"), dtype=torch.bfloat16, lora=False)
    by_relation = corpus.by_relation()
    for rel in random.Random(args.seed).sample(list(corpus.relations), args.relations):
        x = by_relation[rel.id][0]
        text = PROMPT.format(
            name=rel.name, description=rel.description, text=x.text, head=x.head_text, tail=x.tail_text
        )
        chat = [{"role": "user", "content": text}]
        ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt")
        ids = ids if torch.is_tensor(ids) else ids["input_ids"]
        for s in range(args.samples):
            torch.manual_seed(s)
            out = model.generate(
                ids, max_new_tokens=60, do_sample=True, temperature=0.7, top_p=0.9, pad_token_id=tok.pad_token_id
            )
            sample = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()
            print(f"== {rel.name} | memory: {x.text[:80]}\n{sample}\n")


if __name__ == "__main__":
    main()
