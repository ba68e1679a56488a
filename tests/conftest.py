"""Shared fixtures: a tiny random Llama with a tiny trained BPE tokenizer, saved as a local model folder, and
the same model behind a real OpenAI-compatible server (`transformers serve`) for the instructor tests, and the
packaged SmolLM2 GGUF behind llama.cpp's server (skipped without llama-cpp-python).

Nothing is downloaded; building the model takes well under a second, starting the server ~10 s.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

# `--model.dtype auto` takes bf16 on CPUs with native bf16: the suite runs fp32 on every machine alike (the variable
# reaches the subprocesses too); tests/test_model.py checks the choice itself.
os.environ["ERRWISE_CPU_BF16"] = "0"

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def build_tiny_tokenizer(texts: list[str]):
    """A byte-level BPE tokenizer of 600 tokens trained on `texts` (<unk>, <eos>, <pad> special)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<unk>", "<eos>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tk.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<eos>", pad_token="<pad>")


def tokenizer_texts() -> list[str]:
    return [(FIXTURES / "tok_seed.json").read_text()] + [
        "What is the relation of the head to the tail?\nSentence: Head: Tail: Relation: Options:"
    ]


def build_tiny_model(path: Path, texts: list[str]) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer(texts)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny_run(model_dir: Path, out: Path) -> Path:
    """A tiny `errwise run`: 2 tasks x 2 builtin relations, replay with 2 memory instances per relation."""
    from errwise.config import DataConfig, EvalConfig, MethodConfig, ModelConfig, RunConfig, TrainConfig
    from errwise.run import run

    cfg = RunConfig(
        data=DataConfig(dataset="builtin", num_tasks=2, relations_per_task=2, train_size=8, test_size=4),
        model=ModelConfig(name=str(model_dir), lora_r=4, lora_alpha=8),
        train=TrainConfig(epochs=1, batch_size=4, lr=1e-3),
        method=MethodConfig(name="replay", memory_per_relation=2),
        eval=EvalConfig(batch_size=8),
        output_dir=str(out),
    )
    return run(cfg)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A local model folder usable anywhere a model name is: `--model.name <this path>`."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), tokenizer_texts())


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    """(model, tokenizer) loaded from the tiny folder, fp32 on CPU, no LoRA."""
    import torch

    from errwise.model import load_model, load_tokenizer

    tok = load_tokenizer(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), device=torch.device("cpu"), dtype=torch.float32, lora=False)
    return model.eval(), tok


# ---- a real OpenAI-compatible server on loopback: `transformers serve` on the tiny model (instructor tests) ----

SERVED_CONTEXT = 4096  # tokens, prompt and answer: the instructor tests' longest request fits
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """An OpenAI-compatible model server (`cmd`) in a subprocess on 127.0.0.1:<port>, CPU only, offline; ready
    when GET `ready` answers 200."""

    def __init__(self, name: str, cmd: list[str], model: str, port: int, log: Path, ready: str = "/health"):
        self.name = name
        self.cmd = cmd
        self.model = model  # the served model name
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.ready = ready
        self.log = log
        self.startup_seconds = 0.0
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> None:
        self.kill()
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_UPDATE_CHECK="1", CUDA_VISIBLE_DEVICES="")
        env.setdefault("OMP_NUM_THREADS", "1")
        t0 = time.perf_counter()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{self.ready}", timeout=2) as r:
                    if r.status == 200:
                        self.startup_seconds = time.perf_counter() - t0
                        return
            except OSError:
                time.sleep(0.25)
        self.kill()
        pytest.fail(f"{self.name} did not answer {self.ready} within {timeout:g} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL, like a crash; the port is free again at once."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])


@pytest.fixture(scope="session")
def instructor_server(tiny_model_dir, tmp_path_factory) -> Iterator[ServeProcess]:
    """The tiny model (plus a chat template, which `transformers serve` needs) behind `transformers serve`."""
    missing = [m for m in ("fastapi", "uvicorn", "openai") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"transformers serve needs {', '.join(missing)}: pip install fastapi uvicorn openai")
    root = tmp_path_factory.mktemp("serve")
    model_dir = shutil.copytree(tiny_model_dir, root / "tiny-chat")
    (model_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    # The instructor's prompts run to ~1,300 tokens of the tiny tokenizer: the served copy declares a context that
    # holds them, since `transformers serve` (>= 5.25) refuses a request longer than the model's context. RoPE's
    # frequencies do not depend on this number, so the weights mean the same.
    config = json.loads((model_dir / "config.json").read_text())
    config["max_position_embeddings"] = SERVED_CONTEXT
    (model_dir / "config.json").write_text(json.dumps(config, indent=2))
    port = free_port()
    # A pinned server accepts only the exact FORCE_MODEL string as the model name (else HTTP 400).
    cmd = [sys.executable, "-c", "from transformers.cli.transformers import main; main()", "serve", str(model_dir)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    server = ServeProcess("transformers serve", cmd, str(model_dir), port, root / "serve.log")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory) -> Iterator[ServeProcess]:
    """The packaged SmolLM2-135M GGUF behind llama.cpp's OpenAI-compatible server (llama-cpp-python[server])."""
    missing = [m for m in ("llama_cpp", "sse_starlette", "starlette_context") if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the llama.cpp server needs {', '.join(missing)}: pip install -e '.[llamacpp]'")
    from errwise.model import packaged_gguf

    root = tmp_path_factory.mktemp("llama")
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(packaged_gguf()), "--model_alias", "smollm2"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "512", "--n_threads", "1"]
    server = ServeProcess("llama_cpp.server", cmd, "smollm2", port, root / "llama.log", ready="/v1/models")
    server.start()
    try:
        yield server
    finally:
        server.kill()
