"""Load on a real `errwise serve`: concurrent /predict clients for a fixed time, then again while a learn job runs
beside them. Prints p50/p99 latency, sentences/s and failed requests per phase; asserts nothing (tests/test_serve.py
runs it briefly and checks that no request failed).

    python benchmarks/serve_load.py                                   # the tests' tiny random model: seconds
    python benchmarks/serve_load.py runs/demo --clients 4 --seconds 30 --learn-steps 20

Without SOURCE, a tiny run of the tests' tiny random Llama (tests/conftest.py) is made in a temporary folder. The
server runs in its own process on 127.0.0.1 with a fresh serving folder; each client keeps one connection and sends
--batch built-in sentences per request. Phase "serving": --seconds of load. Phase "learning": --corrections
corrections (built-in sentences of learned relations, each with the answer the server gave), POST /learn, and the
same load until the job is done and one second more (at most --learn-timeout); every answer names the version that
gave it, so the switch from v0 to v1 shows.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKEN = "load-test"


@dataclass
class Phase:
    name: str
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # of the answered requests, in seconds
    sentences: int = 0
    failed: int = 0
    errors: Counter = field(default_factory=Counter)
    versions: Counter = field(default_factory=Counter)

    def line(self) -> str:
        lat = sorted(self.latencies)
        q = lambda p: 1000 * lat[min(len(lat) - 1, round(p * (len(lat) - 1)))] if lat else float("nan")  # noqa: E731
        versions = ", ".join(f"{v}: {n}" for v, n in sorted(self.versions.items()))
        return (
            f"{self.name:<9} {self.seconds:5.1f} s  {len(lat) + self.failed:5d} requests  p50 {q(0.5):7.1f} ms  "
            f"p99 {q(0.99):7.1f} ms  {self.sentences / self.seconds:7.1f} sentences/s  failed {self.failed}  "
            f"answered by {versions or '-'}"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_source(root: Path) -> Path:
    """A tiny run (2 tasks x 2 built-in relations, replay) of the tests' tiny random model."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import build_tiny_model, tiny_run, tokenizer_texts

    model = build_tiny_model(root / "tiny-llama", tokenizer_texts())
    return tiny_run(model, root / "run")


def start_server(source: Path, state: Path, port: int, log: Path, steps: int | None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "errwise.cli", "serve", str(source), "--state", str(state), "--port", str(port)]
    cmd += ["--token", TOKEN] + (["--train.max_steps", str(steps)] if steps else [])
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    with log.open("ab") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    t = time.time()
    while time.time() - t < 180:
        if proc.poll() is not None:
            raise RuntimeError(f"errwise serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if call(port, "GET", "/health")[0] == 200:
                return proc
        except OSError:
            time.sleep(0.25)
    proc.kill()
    raise RuntimeError(f"errwise serve did not answer within 180 s: {log.read_text()[-2000:]}")


def call(port: int, method: str, path: str, body: dict | None = None, conn=None) -> tuple[int, dict]:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
        conn.request(method, path, None if body is None else json.dumps(body), headers)
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        if own:
            conn.close()


def sentences() -> list[dict]:
    """The built-in data's sentences as errwise records (tokens and spans), with their relation."""
    from errwise.data.formats import load_corpus
    from errwise.extractor import instance_row

    return [instance_row(x) for x in load_corpus("builtin").instances]


def load(port: int, phase: Phase, clients: int, batch: int, records: list[dict], stop) -> Phase:
    """`clients` threads posting /predict (`batch` records each) until `stop()`; fills `phase`."""
    lock = threading.Lock()

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        i = k * batch
        while not stop():
            body = {"records": [records[(i + j) % len(records)] for j in range(batch)], "top_k": 3}
            i += clients * batch
            t = time.perf_counter()
            try:
                status, out = call(port, "POST", "/predict", body, conn)
                ok = status == 200 and len(out["predictions"]) == batch
                why = "" if ok else f"HTTP {status}: {out.get('error', '')[:80]}"
            except (OSError, http.client.HTTPException, ValueError) as e:
                ok, why = False, f"{type(e).__name__}: {e}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            dt = time.perf_counter() - t
            with lock:
                if ok:
                    phase.latencies.append(dt)
                    phase.sentences += batch
                    phase.versions[out["version"]] += 1
                else:
                    phase.failed += 1
                    phase.errors[why] += 1
        conn.close()

    t = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    phase.seconds = time.perf_counter() - t
    return phase


def benchmark(source: Path, workdir: Path, *, clients: int, seconds: float, batch: int, corrections: int,
              learn_steps: int | None, learn_timeout: float) -> tuple[list[Phase], dict]:  # fmt: skip
    """Both phases against a fresh server of `source`; returns them and the learn job as it ended."""
    port = free_port()
    proc = start_server(source, workdir / "state", port, workdir / "serve.log", learn_steps)
    try:
        records = sentences()
        learned = {r["id"] for r in call(port, "GET", "/relations")[1]["relations"]}
        end = time.time() + seconds
        serving = load(port, Phase("serving"), clients, batch, records, lambda: time.time() > end)
        fixes = [r for r in records if r["relation"] in learned][:corrections]
        answers = call(port, "POST", "/predict", {"records": fixes})[1]["predictions"]
        for rec, ans in zip(fixes, answers):
            status, out = call(port, "POST", "/corrections", {**rec, "predicted": ans["relation"]})
            assert status == 201, out
        status, job = call(port, "POST", "/learn")
        assert status == 202, job
        state = {"job": job, "done_at": None}
        start = time.time()

        def stop() -> bool:
            now = time.time()
            if state["done_at"] is None and now - state.get("polled", 0) > 0.5:
                state["polled"] = now
                state["job"] = call(port, "GET", f"/jobs/{job['id']}")[1]
                if state["job"]["state"] in ("done", "failed"):
                    state["done_at"] = now
            return now - start > learn_timeout or (state["done_at"] is not None and now - state["done_at"] > 1)

        learning = load(port, Phase("learning"), clients, batch, records, stop)
        return [serving, learning], state["job"]
    finally:
        proc.kill()
        proc.wait(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", nargs="?", help="run, extractor or export folder [a tiny run of the tests' model]")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients [4]")
    ap.add_argument("--seconds", type=float, default=5, help="length of the serving phase [5]")
    ap.add_argument("--batch", type=int, default=4, help="sentences per request [4]")
    ap.add_argument("--corrections", type=int, default=8, help="corrections learned in the learning phase [8]")
    ap.add_argument("--learn-steps", type=int, help="train.max_steps of the learn job [the source's; tiny: 40]")
    ap.add_argument("--learn-timeout", type=float, default=600, help="the learning phase's longest [600 s]")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        work = Path(tmp)
        source = Path(args.source) if args.source else tiny_source(work)
        steps = args.learn_steps or (None if args.source else 40)
        options = {"clients": args.clients, "seconds": args.seconds, "batch": args.batch}
        options |= {"corrections": args.corrections, "learn_steps": steps, "learn_timeout": args.learn_timeout}
        phases, job = benchmark(source, work, **options)
    print(f"errwise serve {source if args.source else '(tiny random model)'}: {args.clients} clients, "
          f"{args.batch} sentences per request, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}")  # fmt: skip
    for p in phases:
        print(p.line())
        for why, n in p.errors.most_common(3):
            print(f"  {n} x {why}")
    took = job.get("result", {}).get("seconds")
    print(f"learn job {job['id']}: {job['state']}" + (f" in {took:.1f} s of learning, now serving {job['new_version']}"
          if job["state"] == "done" else f": {job.get('error', 'still running')}"))  # fmt: skip


if __name__ == "__main__":
    main()
