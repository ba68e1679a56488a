"""Shared fixtures: a tiny random Llama with a tiny trained BPE tokenizer, saved as a local model folder, and
the same model behind a real OpenAI-compatible server (`transformers serve`) for the instructor tests.

Nothing is downloaded; building the model takes well under a second, starting the server ~10 s.
"""

from __future__ import annotations

import importlib.util
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

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """`transformers serve <model folder>` in a subprocess on 127.0.0.1:<port>, CPU only, offline."""

    def __init__(self, model_dir: Path, port: int, log: Path):
        self.model = str(model_dir)  # a pinned server accepts only the exact FORCE_MODEL string (else HTTP 400)
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}/v1"
        self.log = log
        self.startup_seconds = 0.0
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> None:
        self.kill()
        cmd = [sys.executable, "-c", "from transformers.cli.transformers import main; main()", "serve", self.model]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu"]
        env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_DISABLE_UPDATE_CHECK="1", CUDA_VISIBLE_DEVICES="")
        env.setdefault("OMP_NUM_THREADS", "1")
        t0 = time.perf_counter()
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                pytest.fail(f"transformers serve exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        self.startup_seconds = time.perf_counter() - t0
                        return
            except OSError:
                time.sleep(0.25)
        self.kill()
        pytest.fail(f"transformers serve did not answer /health within {timeout:g} s:\n{self.log_tail()}")

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
    server = ServeProcess(model_dir, free_port(), root / "serve.log")
    server.start()
    try:
        yield server
    finally:
        server.kill()
