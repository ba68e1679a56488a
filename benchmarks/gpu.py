"""GPU figures in one command of at most 8 minutes, for the day a device is lent. Prints figures; asserts nothing.

    benchmarks/gpu.sh                                          # on the device: everything, under a hard time limit
    python benchmarks/gpu.py --dry-run                         # on CPU: the whole path, shrunk, in under a minute
    benchmarks/gpu.sh --smollm2-gguf-parts A B --smollm2-tokenizer TOK   # with the real SmolLM2 (docs/speed.md)

1. Training: tokens/s and model FLOPs utilisation (MFU) of errwise's own training loop (`errwise.train.train`, LoRA
   r16 on every linear layer as `errwise.model.prepare_model` makes it, bf16) on randomly initialised models of the
   shapes of Qwen2.5-0.5B and SmolLM2-135M (built from their configs: nothing is downloaded), one figure per batch
   size, warm-up steps excluded. MFU counts 6 x (the transformer blocks' matrix parameters) FLOPs per token, plus the
   vocabulary projection at the answer tokens (the only positions training computes it at), over the device's dense
   bf16 peak (989 TFLOP/s on an H100/H200; --peak-tflops); attention scores are left out (~70-token sequences). With
   LoRA the frozen weights get no weight gradient, so the arithmetic done is 4 x, not 6 x: printed beside it.
2. Evaluation: exact prediction among 80 candidate relations (`errwise.evaluate.candidate_scores`) in sentences/s,
   beside the prompts' forward alone (benchmarks/eval_speed.py's `prompt_forward`), per batch size, on the same two
   random models. Random weights are an uncertain model: the search prunes less than for a trained one.
3. The real SmolLM2-135M-Instruct, if its weights travelled (--smollm2 DIR, or --smollm2-gguf-parts): FCRE FewRel
   5-shot, seed 100, end to end through `errwise run configs/fcre_fewrel_5shot.yaml`; per-task accuracy, wall time.

Sentences and training examples are FCRE FewRel's (--fcre; 80 synthetic relations of 1-5 words otherwise), tokenised
by a byte-level BPE of 4,000 tokens trained on the training prompts: 70 prompt and 4 answer tokens on average, as
SmolLM2's tokenizer gives (69 and 3.2). The script keeps its own time budget (--budget-s): each part gets a share
and each measurement sizes itself from its warm-up to fit; what does not fit is skipped with a printed line. It
exits non-zero only if something crashed (the rest still runs).
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import os
import platform
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from eval_speed import prompt_forward

from errwise import evaluate
from errwise.data.types import Relation, RelationInstance
from errwise.model import label_ids, pick_attention, pick_device, prepare_model
from errwise.prompts import plain_example
from errwise.train import train

REPO = Path(__file__).resolve().parents[1]
DEFAULT_FCRE = REPO.parent / "shared" / "data" / "fcre" / "fewrel"
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}  # dense bf16
SHAPES = {  # the published configs of Qwen/Qwen2.5-0.5B-Instruct and HuggingFaceTB/SmolLM2-135M-Instruct
    "qwen2.5-0.5b": ("qwen2", dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                   intermediate_size=4864, vocab_size=151936, rope_theta=1e6, rms_norm_eps=1e-6,
                                   max_position_embeddings=32768)),
    "smollm2-135m": ("llama", dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                                   intermediate_size=1536, vocab_size=49152, rope_theta=1e5, rms_norm_eps=1e-5,
                                   max_position_embeddings=8192)),
}  # fmt: skip
SHARES = {"train": 0.25, "eval": 0.20, "fcre": 0.55}  # of the budget; a part not run gives its share to the others


def say(line: str) -> None:
    print(line, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Clock:
    """Deadlines: each slot (a part for one model) ends at the script's start plus the shares given so far, so time a
    slot leaves unused passes to the next."""

    start: float
    budget: float
    given: float = 0.0

    def slot(self, share: float) -> float:
        self.given += share
        return self.start + self.given * self.budget

    @staticmethod
    def left(deadline: float) -> float:
        return deadline - time.perf_counter()


@dataclass(frozen=True)
class Where:
    """What every figure's line names besides the model and batch."""

    device: torch.device
    dtype: torch.dtype
    name: str  # the device's, e.g. NVIDIA H200
    peak: float | None  # dense bf16 TFLOP/s

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


# ----------------------------------------------------------------------------------------------- data and models


def fcre_data(folder: Path) -> tuple[list[RelationInstance], list[RelationInstance], list[Relation]] | None:
    """FCRE FewRel 5-shot's training and test instances and its 80 relations, None without the files."""
    if not (folder / "relation_name.txt").is_file():
        return None
    from errwise.data.formats import load_fcre

    corpus = load_fcre(folder, 5)
    return list(corpus.train), list(corpus.test), list(corpus.relations)


def synthetic_data(seed: int = 0) -> tuple[list[RelationInstance], list[RelationInstance], list[Relation]]:
    """80 relations named by 1-5 made-up words, and sentences of ~27 such words with a head and a tail."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "de", "ven", "mar", "tel", "os", "an", "bri", "gu"]
    words = sorted({"".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(600)})
    names: list[str] = []
    while len(names) < 80:
        name = " ".join(rng.choices(words, k=rng.randint(1, 5)))
        names += [name] if name not in names else []
    relations = [Relation(str(i + 1), n) for i, n in enumerate(names)]

    def instance(uid: str) -> RelationInstance:
        tokens = tuple(rng.choices(words, k=rng.randint(15, 40)))
        h, t = rng.sample(range(len(tokens) - 1), 2)
        return RelationInstance(uid, tokens, (h, h + 1), (t, t + 2), rng.choice(relations).id)

    return [instance(f"train/{i}") for i in range(1350)], [instance(f"test/{i}") for i in range(8000)], relations


def build_tokenizer(texts: list[str], vocab_size: int = 4000):
    """A byte-level BPE trained on `texts` (<unk>, <eos>, <pad> special), as tests/conftest.py builds its tiny one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<eos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(texts, trainer)
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", eos_token="<eos>", pad_token="<pad>"
    )


def build_model(shape: str, tok, device: torch.device, dtype: torch.dtype, tiny: bool):
    """A randomly initialised causal LM of `shape` (tied embeddings), built on `device`; `tiny`: 2 layers, 8-wide
    heads, the tokenizer's vocabulary."""
    kind, kw = SHAPES[shape]
    kw = dict(kw)
    if tiny:
        width = 8 * kw["num_attention_heads"]
        kw.update(
            hidden_size=width,
            intermediate_size=width * kw["intermediate_size"] // kw["hidden_size"],
            num_hidden_layers=2,
            vocab_size=len(tok),
        )
    cfg = transformers.AutoConfig.for_model(
        kind, **kw, tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
    )
    torch.manual_seed(0)
    with device:  # initialised where it runs (seconds on a GPU for 0.5B parameters)
        model = transformers.AutoModelForCausalLM.from_config(
            cfg, dtype=dtype, attn_implementation=pick_attention(device, dtype)
        )
    return model.to(device)


def matrix_params(model) -> tuple[int, int]:
    """(the transformer blocks' linear-layer weights, the vocabulary projection's): what a token multiplies."""
    head = model.get_output_embeddings().weight.numel()
    blocks = sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and "lm_head" not in name and "lora_" not in name
    )
    return blocks, head


# ----------------------------------------------------------------------------------------------- measurements


def measure_train(model, tok, examples, batch: int, deadline: float, where: Where, max_steps: int):
    """errwise's `train` on `batch`-sized steps: one warm-up call of 2 steps, then as many steps as fit (from the
    warm-up's pace, at most `max_steps`). The example pool is 4 batches, cycled: its tokenisation is in the time."""
    pool, device, peak = examples[: 4 * batch], where.device, where.peak
    kw = dict(epochs=1, batch_size=batch, lr=1e-4, weight_decay=0.0, warmup_ratio=0.0, max_length=256, seed=0)
    sync(device)
    t = time.perf_counter()
    train(model, tok, pool, max_steps=2, **kw)
    sync(device)
    pace = (time.perf_counter() - t) / 2  # an upper bound: the first steps pay one-time costs
    steps = min(max_steps, int(0.8 * Clock.left(deadline) / pace))
    if steps < 2:
        return None, f"{pace:.2f} s/step at warm-up: no time left in this part's share"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t = time.perf_counter()
    stats = train(model, tok, pool, max_steps=steps, **kw)
    sync(device)
    dt = time.perf_counter() - t
    blocks, head = matrix_params(model)
    answers = sum(len(label_ids(tok, ex.answer)) for ex in pool) / len(pool) * batch * steps  # mean, not exact
    figure = f"{stats.tokens / dt:,.0f} tokens/s, {1e3 * dt / steps:.1f} ms/step ({steps} steps, "
    figure += f"{stats.tokens / steps / batch:.0f} tokens/example)"
    if peak and device.type == "cuda":
        mfu = [100 * (k * blocks * stats.tokens + k * head * answers) / dt / 1e12 / peak for k in (6, 4)]
        figure += f", MFU {mfu[0]:.1f}% of {peak:g} TFLOP/s (6N; LoRA's own arithmetic, 4N: {mfu[1]:.1f}%)"
        figure += f", peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
    elif device.type == "cuda":
        figure += ", MFU unknown: no peak for this GPU (pass --peak-tflops)"
    else:
        figure += ", MFU not meaningful on CPU"
    return figure, None


def measure_eval(model, tok, xs, prompts, relations, batch: int, deadline: float, where: Where):
    """Exact prediction among `relations` (two thirds of the time left; tokenisation included, as in evaluation) and
    the forward of the `prompts` (`xs`'s token ids) alone (the rest), each on as many whole batches as its warm-up's
    pace says fit."""
    device = where.device
    sync(device)
    t = time.perf_counter()
    evaluate.candidate_scores(model, tok, xs[:batch], relations, batch_size=batch)
    sync(device)
    pace = time.perf_counter() - t  # seconds per batch, upper bound
    n = min(len(xs), batch * int(0.8 * Clock.left(deadline) * 2 / 3 / pace))
    if n < batch:
        return None, f"{pace:.2f} s/batch at warm-up: no time left in this part's share"
    t = time.perf_counter()
    evaluate.candidate_scores(model, tok, xs[:n], relations, batch_size=batch)
    sync(device)
    exact = n / (time.perf_counter() - t)
    prompt_forward(model, tok, prompts[:batch], batch)  # warm-up at this batch size
    sync(device)
    m = min(len(xs), max(batch, batch * int(0.8 * Clock.left(deadline) * exact / batch)))
    t = time.perf_counter()
    prompt_forward(model, tok, prompts[:m], batch)
    sync(device)
    forward = m / (time.perf_counter() - t)
    figure = f"exact prediction {exact:,.1f} sentences/s ({n} sentences); prompt-only forward {forward:,.1f} "
    return figure + f"sentences/s ({m}); exact = {forward / exact:.1f}x the forward's time", None


# ----------------------------------------------------------------------------------------------- FCRE end to end


def smollm2_model(args, out: Path) -> tuple[str | None, str]:
    """The model to run FCRE with (a folder or .gguf path) and what it is, or (None, why not)."""
    if args.smollm2:
        if not (Path(args.smollm2) / "config.json").is_file():
            return None, f"--smollm2 {args.smollm2} is no model folder (no config.json)"
        return args.smollm2, f"SmolLM2 folder {args.smollm2}"
    if not args.smollm2_gguf_parts:
        return None, "no real SmolLM2 weights given (--smollm2 DIR or --smollm2-gguf-parts A B; docs/speed.md)"
    import importlib.util

    if importlib.util.find_spec("gguf") is None:
        return None, "the gguf package is missing here: carry its wheel (docs/speed.md)"
    parts = [Path(p) for p in args.smollm2_gguf_parts]
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        return None, f"no such GGUF part: {', '.join(missing)}"
    gguf = out / "SmolLM2-135M-Instruct.Q4_1.gguf"
    with gguf.open("wb") as f:
        for p in parts:
            with p.open("rb") as part:
                shutil.copyfileobj(part, f)
    if gguf.read_bytes()[:2] == b"\x1f\x8b":  # the parts of a gzipped file
        gguf.write_bytes(gzip.decompress(gguf.read_bytes()))
    what = f"SmolLM2 GGUF from {len(parts)} parts ({gguf.stat().st_size / 2**20:.1f} MiB)"
    if args.smollm2_tokenizer:
        # The weights as this transformers converts them, the tokenizer as a version >= 5.18 converted it.
        from errwise.model import gguf_folder

        folder = out / "smollm2"
        shutil.copytree(gguf_folder(gguf), folder, dirs_exist_ok=True)
        for f in Path(args.smollm2_tokenizer).glob("*"):
            if f.name.startswith("tokenizer") or f.name == "chat_template.jinja":
                shutil.copy(f, folder / f.name)
        return str(folder), f"{what}, tokenizer from {args.smollm2_tokenizer}"
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    if (major, minor) < (5, 18):
        return None, (
            f"transformers {transformers.__version__} converts the GGUF tokenizer otherwise than >= 5.18 (labels end "
            "with the BOS token: pyproject.toml); pass --smollm2-tokenizer DIR, converted by transformers >= 5.18"
        )
    return str(gguf), what


def run_fcre(model: str, fcre: Path, run_dir: Path, deadline: float, extra: list[str]) -> bool:
    """`errwise run` of FCRE FewRel 5-shot order 0 (seed 100) in a child process, stopped (SIGTERM: it saves the
    tasks done) at the deadline; prints each finished task's accuracy. Returns whether it crashed."""
    cmd = [sys.executable, "-m", "errwise.cli", "run", str(REPO / "configs" / "fcre_fewrel_5shot.yaml")]
    cmd += ["--data.path", str(fcre), "--data.order", "0", "--model.name", model, "--output_dir", str(run_dir)]
    cmd += extra
    say(f"fcre: {shlex.join(cmd)}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    t = time.perf_counter()
    child = subprocess.Popen(cmd, env=env)
    try:
        rc, stopped = child.wait(timeout=max(1.0, Clock.left(deadline))), False
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        rc, stopped = 0, True
    wall = time.perf_counter() - t
    lines = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").is_file() else []
    for line in map(json.loads, lines):
        row = " ".join(f"{100 * a:.1f}" for a in line["accuracy_row"])
        say(
            f"fcre T{line['task'] + 1}: seen accuracy {100 * line['seen_accuracy']:.1f}% ({line['n_test']} test "
            f"sentences, {line['seconds']:.0f} s); accuracy per task so far: {row}"
        )
    done = f"{len(lines)} task(s) done"
    state = (
        f"stopped at its time share, {done} (resume: errwise run {run_dir})" if stopped else f"exit code {rc}, {done}"
    )
    say(f"fcre: wall time {wall:.0f} s, {state}")
    return rc != 0


# ----------------------------------------------------------------------------------------------- the script


def benchmark_shape(shape: str, args, where: Where, deadlines: dict[str, float], data: dict) -> tuple[list, bool]:
    """Parts 1 and 2 on a random model of `shape`: one summary row per (part, batch size); whether anything crashed."""
    label = f"{shape}{' tiny' if args.tiny else ''} (random)"
    try:
        model = prepare_model(build_model(shape, data["tok"], where.device, where.dtype, args.tiny), lora=True)
    except Exception:
        traceback.print_exc()
        say(f"{label}: crashed while building the model")
        return [], True
    blocks, head = matrix_params(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    say(
        f"{label}: {blocks / 1e6:.1f}M block matrix + {head / 1e6:.1f}M vocabulary parameters, LoRA r16 on every "
        f"linear layer ({trainable / 1e6:.2f}M trainable), {model.config._attn_implementation} attention"
    )
    rows, crashed = [], False
    for part, deadline in deadlines.items():
        batches = [int(b) for b in (args.train_batches if part == "train" else args.eval_batches).split(",")]
        for i, batch in enumerate(batches):
            until = time.perf_counter() + Clock.left(deadline) / (len(batches) - i)
            try:
                if part == "train":
                    figure, skipped = measure_train(
                        model, data["tok"], data["examples"], batch, until, where, args.train_max_steps
                    )
                else:
                    figure, skipped = measure_eval(
                        model, data["tok"], data["test"], data["prompts"], data["relations"], batch, until, where
                    )
            except Exception as e:
                traceback.print_exc()
                figure, skipped, crashed = None, f"crashed: {type(e).__name__}", True
                if where.device.type == "cuda":  # out of memory at a large batch: the next one may still fit
                    torch.cuda.empty_cache()
            figure = figure or f"skipped: {skipped}"
            say(f"{part} {label} batch {batch} {where.dtype_name} {where.name}: {figure}")
            rows.append(
                dict(part=part, model=label, batch=batch, dtype=where.dtype_name, device=where.name, figure=figure)
            )
    del model
    gc.collect()
    if where.device.type == "cuda":
        torch.cuda.empty_cache()
    return rows, crashed


def fcre_part(args, where: Where, model: str, what: str, deadline: float, out: Path) -> tuple[dict, bool]:
    """Part 3: the FCRE run; its summary row and whether it crashed. A dry run runs 2 tasks for a few steps."""
    extra = shlex.split(args.fcre_args)
    if args.dry_run:
        extra += ["--data.num_tasks", "2", "--train.max_steps", "2", "--eval.intermediate_test", "1"]
        extra += ["--eval.batch_size", "64", "--model.device", "cpu"]
    say(f"fcre: model {model}: {what}")
    run_dir = out / "fcre-run"
    crashed = run_fcre(model, Path(args.fcre), run_dir, deadline, extra)
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else None
    figure = "incomplete: see the fcre lines"
    if summary:
        figure = f"final {100 * summary['final_accuracy']:.1f}%, average {100 * summary['average_accuracy']:.1f}%, "
        figure += f"{summary['wall_seconds']:.0f} s"
    row = dict(part="fcre", model=what.split(",")[0], batch="preset's", dtype=where.dtype_name, device=where.name)
    return dict(row, figure=figure), crashed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="the whole path on CPU, shrunk: --device cpu --tiny, few steps and sentences, FCRE 2 tasks on a tiny "
        "random stand-in model",
    )
    ap.add_argument("--device", default="auto", help="auto (cuda if there is one), cuda, cpu")
    ap.add_argument("--tiny", action="store_true", help="2-layer, 8-wide-head versions of both shapes")
    ap.add_argument("--budget-s", type=float, default=440, help="seconds for everything (gpu.sh: its limit - 40)")
    ap.add_argument("--parts", default="train,eval,fcre", help="comma-separated: train, eval, fcre")
    ap.add_argument("--peak-tflops", type=float, default=None, help="device dense bf16 peak (default: known GPUs)")
    ap.add_argument("--train-batches", default="8,64,256", help="batch sizes (8: the FCRE presets')")
    ap.add_argument("--train-max-steps", type=int, default=200, help="timed steps per batch size, at most")
    ap.add_argument("--eval-batches", default="16,64,256", help="batch sizes (16: the FCRE presets')")
    ap.add_argument("--eval-sentences", type=int, default=8000, help="test sentences, at most (time permitting)")
    ap.add_argument("--fcre", default=str(DEFAULT_FCRE), help="FCRE FewRel folder (relation_name.txt, 5shot/, ...)")
    ap.add_argument("--smollm2", help="a SmolLM2-135M-Instruct model folder (config.json, weights, tokenizer)")
    ap.add_argument(
        "--smollm2-gguf-parts",
        nargs="+",
        metavar="PART",
        help="pieces of the SmolLM2 GGUF (or of it gzipped), joined in this order (made by `split`: docs/speed.md)",
    )
    ap.add_argument(
        "--smollm2-tokenizer",
        help="tokenizer files converted from the GGUF by transformers >= 5.18, used with the parts where this "
        "transformers is older",
    )
    ap.add_argument("--fcre-args", default="", help="more `errwise run` options, e.g. '--eval.batch_size 64'")
    ap.add_argument("--out", default=None, help="output folder (figures.json, the FCRE run); default runs/gpu-TIME")
    args = ap.parse_args()
    if args.dry_run:
        args.device, args.tiny, args.train_batches, args.eval_batches = "cpu", True, "4", "8"
        args.train_max_steps, args.eval_sentences, args.budget_s = 3, 16, min(args.budget_s, 60)
        torch.set_num_threads(1)
    clock = Clock(time.perf_counter(), args.budget_s)
    device = pick_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    where = Where(device, torch.bfloat16 if device.type == "cuda" else torch.float32, name, peak)
    out = Path(args.out or REPO / "runs" / time.strftime("gpu-%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    say(
        f"device {name}, {where.dtype_name}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"budget {args.budget_s:.0f} s, peak {f'{peak:g} TFLOP/s' if peak else 'unknown'}, output {out}"
    )
    if device.type == "cpu":
        say("note: on CPU the figures only show that the path runs; MFU is not meaningful there")

    fcre = fcre_data(Path(args.fcre))
    train_xs, test_xs, relations = fcre or synthetic_data()
    rel = {r.id: r for r in relations}
    examples = [plain_example(x, rel[x.relation]) for x in random.Random(0).sample(train_xs, len(train_xs))]
    test_xs = random.Random(1).sample(test_xs, min(args.eval_sentences, len(test_xs)))
    tok = build_tokenizer([ex.prompt for ex in examples] + [" " + r.name for r in relations])
    prompts = evaluate.prompt_ids(tok, test_xs, None, 256)
    data = dict(tok=tok, examples=examples, test=test_xs, prompts=prompts, relations=relations)
    lengths = [len(ids) for ids in prompts]
    say(
        f"data: {f'FCRE FewRel 5-shot ({args.fcre})' if fcre else 'synthetic (no FCRE files at --fcre)'}, "
        f"{len(relations)} relations; tokenizer: BPE of {len(tok)} tokens, {sum(lengths) / len(lengths):.1f} tokens "
        "a prompt"
    )

    model, what, crashed = None, f"no FCRE files at {args.fcre}", False
    if "fcre" in parts and fcre and args.dry_run:  # a tiny random stand-in with the benchmark's tokenizer
        model, what = str(out / "tiny-smollm2"), "tiny random stand-in, 2 tasks (dry run: the path only)"
        build_model("smollm2-135m", tok, device, where.dtype, tiny=True).save_pretrained(model)
        tok.save_pretrained(model)
    elif "fcre" in parts and fcre:
        try:
            model, what = smollm2_model(args, out)
        except Exception as e:
            traceback.print_exc()
            model, what, crashed = None, f"crashed while preparing SmolLM2: {type(e).__name__}", True
    shares = {p: s for p, s in SHARES.items() if p in parts and (p != "fcre" or model)}
    shares = {p: s / sum(shares.values()) for p, s in shares.items()}

    rows: list[dict] = []
    for shape in SHAPES if {"train", "eval"} & shares.keys() else []:
        deadlines = {p: clock.slot(shares[p] / len(SHAPES)) for p in ("train", "eval") if p in shares}
        shape_rows, shape_crashed = benchmark_shape(shape, args, where, deadlines, data)
        rows, crashed = rows + shape_rows, crashed or shape_crashed
    if "fcre" in parts and model:
        row, fcre_crashed = fcre_part(args, where, model, what, clock.slot(shares["fcre"]), out)
        rows, crashed = rows + [row], crashed or fcre_crashed
    elif "fcre" in parts:
        say(f"fcre: skipped: {what}")
        rows.append(
            dict(
                part="fcre", model="SmolLM2-135M-Instruct", batch="-", dtype="-", device=name, figure=f"skipped: {what}"
            )
        )

    (out / "figures.json").write_text(json.dumps(dict(device=name, host=platform.node(), rows=rows), indent=1))
    say(f"\nsummary ({time.perf_counter() - clock.start:.0f} s of {args.budget_s:.0f}):\n")
    say("| part | model | batch | dtype | device | figure |\n| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        say(f"| {r['part']} | {r['model']} | {r['batch']} | {r['dtype']} | {r['device']} | {r['figure']} |")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
