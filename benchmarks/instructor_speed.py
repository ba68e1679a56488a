"""Speed of a served instructor on the instructor's real prompts: prompt and completion tokens per second and
seconds per call, for LE and LEC requests built with the product's prompt functions from FewRel instances.

    python benchmarks/instructor_speed.py --base-url http://127.0.0.1:8080/v1 --model qwen --n 3

Each request is streamed, so the time to the first token (prompt processing) and the rest (generation) are
measured apart: prompt tok/s = prompt tokens / time to first token; completion tok/s = (completion tokens - 1)
/ (time after the first token). An error case here is any training instance of the first task paired with
another relation of the task as the "wrong answer" (the prompt's shape and length are those of a real error
case); LEC adds its two most similar instances by shared words (the product uses the target's hidden states).
Prints figures only, with `uptime`'s load next to them (other jobs on the machine slow every figure).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.request

from errwise.config import InstructorConfig, from_dict, load_yaml
from errwise.methods.instructor import request_messages
from errwise.run import make_stream


def stream_chat(base_url: str, model: str, messages, max_tokens: int, timeout: float) -> dict:
    """One streamed chat completion: tokens and seconds to the first token and in all."""
    if messages[-1]["role"] == "assistant":  # the in-process prefill; OpenAIChat drops it too
        messages = messages[:-1]
    body = {
        "model": model,
        "messages": messages,
        "temperature": 0.0,
        "max_tokens": max_tokens,
        "seed": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    req = urllib.request.Request(
        base_url.rstrip("/") + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    t0 = time.perf_counter()
    first, chunks, usage, text = None, 0, {}, []
    with opener.open(req, timeout=timeout) as r:
        for raw in r:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            data = json.loads(line[5:])
            usage = data.get("usage") or usage
            for choice in data.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    first = first or time.perf_counter()
                    chunks += 1
                    text.append(piece)
    total = time.perf_counter() - t0
    first = (first or time.perf_counter()) - t0
    if not usage.get("prompt_tokens"):  # llama_cpp.server streams no usage: ask again for one token (its prompt
        # cache makes this cheap) and read the prompt's length from the non-streamed reply
        once = {k: v for k, v in body.items() if k != "stream_options"}
        req.data = json.dumps({**once, "stream": False, "max_tokens": 1}).encode()
        with opener.open(req, timeout=timeout) as r:
            usage = {**json.loads(r.read()).get("usage", {}), "completion_tokens": usage.get("completion_tokens")}
    return {
        "prompt_tokens": usage.get("prompt_tokens", 0),
        "completion_tokens": usage.get("completion_tokens") or chunks,  # a chunk is one token on both servers
        "first_token_s": first,
        "seconds": total,
        "text": "".join(text),
    }


def requests(stream, n: int, contrast: bool):
    """n (instance, gold, wrong, similar right cases) from the first task's training data."""
    task = stream.tasks[0]
    rels = [stream.relation(r) for r in task.relations]
    out = []
    for i, x in enumerate(task.train[: n * 7 : 7]):  # spread over the task's relations
        gold = stream.relation(x.relation)
        wrong = next(r for r in rels[i % len(rels) :] + rels if r.id != gold.id)
        correct = []
        if contrast:
            words = set(x.text.lower().split())
            pool = [y for y in task.train if y.uid != x.uid]
            pool.sort(key=lambda y: -len(words & set(y.text.lower().split())))
            correct = [(y, stream.relation(y.relation)) for y in pool[:2]]
        out.append((x, gold, wrong, correct))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-url", required=True, help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8080/v1")
    p.add_argument("--model", required=True, help="the served model name")
    p.add_argument("--n", type=int, default=3, help="requests per mode (LE, LEC)")
    p.add_argument("--max-tokens", type=int, default=256, help="as --instructor.max_tokens")
    p.add_argument("--config", default="configs/cpu_forget.yaml")
    p.add_argument("--data-path", default=os.environ.get("ERRWISE_FEWREL_DIR", "../shared/data/fewrel"))
    p.add_argument("--timeout", type=float, default=900.0)
    args = p.parse_args()
    d = load_yaml(args.config)
    d["data"]["path"] = args.data_path
    stream = make_stream(from_dict(d, source=args.config))
    ic = InstructorConfig(per_error=2, max_tokens=args.max_tokens)
    print(f"{args.base_url} model={args.model}; load before: {os.getloadavg()[0]:.2f} (1-min average)")
    for mode in ("le", "lec"):
        rows = []
        for request in requests(stream, args.n, contrast=mode == "lec"):
            r = stream_chat(args.base_url, args.model, request_messages(request, ic), args.max_tokens, args.timeout)
            rows.append(r)
            print(
                f"  {mode}: prompt {r['prompt_tokens']} tok in {r['first_token_s']:.1f} s, completion "
                f"{r['completion_tokens']} tok, {r['seconds']:.1f} s in all; load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
        pt, ct = sum(r["prompt_tokens"] for r in rows), sum(r["completion_tokens"] for r in rows)
        ft, tt = sum(r["first_token_s"] for r in rows), sum(r["seconds"] for r in rows)
        print(
            f"{mode.upper()}: {len(rows)} calls, prompt {pt / len(rows):.0f} tok/call at {pt / ft:.1f} tok/s, "
            f"completion {ct / len(rows):.0f} tok/call at {(ct - len(rows)) / max(tt - ft, 1e-9):.1f} tok/s, "
            f"{tt / len(rows):.1f} s/call; load after {os.getloadavg()[0]:.2f}",
            flush=True,
        )
    print("last reply:\n" + rows[-1]["text"])


if __name__ == "__main__":
    main()
