"""What made a run's numbers besides its config: library versions, the model's and tokenizer's bytes, dtype,
threads and the processor's bf16 instructions.

The same command gives other numbers on another machine or with another conversion of the model (a GGUF file
converted by another transformers version, a CPU without native bf16), so every start of a run (a fresh one and
each resume) appends one line to `environment.jsonl` in its folder, and `errwise compare` names the fields in
which the rows it compares differ.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

# Files of a model folder that hold the weights (transformers' names).
_WEIGHTS = ("*.safetensors", "*.bin")
_PACKAGES = ("torch", "transformers", "peft", "accelerate", "tokenizers", "gguf", "numpy")
# Fields that name the environment; `compare` reports a difference in any of them.
COMPARED = (
    "errwise",
    "python",
    *_PACKAGES,
    "model_weights",
    "tokenizer",
    "converted_by",
    "dtype",
    "threads",
    "device",
    "cpu_bf16",
)
CONVERSION_FILE = "errwise_conversion.json"
"""Written into a GGUF file's converted folder: which file and which transformers version made it."""


def files_digest(folder: Path, patterns: Sequence[str]) -> str | None:
    """sha256 over the named files of `folder` (name and bytes, sorted by name), 16 hex digits; None if none."""
    files = sorted({p for pat in patterns for p in folder.glob(pat) if p.is_file()})
    if not files:
        return None
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0")
        with p.open("rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    return h.hexdigest()[:16]


def version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def code_version(source: Path = Path(__file__).parent) -> str:
    """errwise's version and, when it runs from a git checkout, the commit (`+g` and 12 hex digits, `.dirty` with
    uncommitted changes to tracked files): a change of errwise's own arithmetic (the evaluation path, say) moves
    numbers as a library's does."""
    from errwise import __version__

    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""

    try:
        # Only when errwise's own files are tracked there (an install inside another checkout's ignored venv is not).
        commit = git("ls-files", "--", ".") and git("rev-parse", "--short=12", "HEAD")
        dirty = commit and git("status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+g{commit}" + (".dirty" if dirty else "") if commit else __version__


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The processor's bf16-related flags (avx512_bf16, amx_bf16, amx_tile) from /proc/cpuinfo; [] elsewhere."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted(f for f in flags if f in ("avx512_bf16", "amx_bf16", "amx_tile"))


def cpu_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    try:
        with open(cpuinfo) as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


def tokenizer_digest(tok: PreTrainedTokenizerBase) -> str:
    """sha256 of what the tokenizer does, 16 hex digits: its whole definition (vocabulary, merges, normalisation,
    pre-tokenisation, the post-processor that may add a BOS token) and its special tokens' ids. Read from the
    loaded tokenizer, not its files, whose bytes also change with settings of no effect (`local_files_only`)."""
    backend = getattr(tok, "backend_tokenizer", None)
    definition = backend.to_str() if backend is not None else json.dumps(sorted(tok.get_vocab().items()))
    special = f"bos={tok.bos_token_id} eos={tok.eos_token_id} pad={tok.pad_token_id}"
    return hashlib.sha256(f"{definition}|{special}".encode()).hexdigest()[:16]


def collect(model_path: str, model: torch.nn.Module, tok: PreTrainedTokenizerBase, device: torch.device) -> dict:
    """The environment of a run that loaded `model` and `tok` from `model_path` (a folder, or a hub id) onto
    `device`."""
    folder = Path(model_path)
    env: dict = {"errwise": code_version(), "python": platform.python_version(), **{p: version(p) for p in _PACKAGES}}
    if folder.is_dir():
        env["model_weights"] = files_digest(folder, _WEIGHTS)
        conversion = folder / CONVERSION_FILE
        env["converted_by"] = json.loads(conversion.read_text()).get("transformers") if conversion.is_file() else None
    else:  # a hub id: the revision transformers resolved stands for the bytes
        revision = getattr(getattr(model, "config", None), "_commit_hash", None)
        env["model_weights"] = f"{model_path}@{revision}"
        env["converted_by"] = None
    env["tokenizer"] = tokenizer_digest(tok)
    env["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    env["threads"] = torch.get_num_threads()
    env["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    env["cpu"] = cpu_name()
    env["cpu_bf16"] = ",".join(cpu_flags()) or "none"
    env["platform"] = f"{platform.system()} {platform.machine()}"
    return env


def read(run_dir: Path) -> list[dict]:
    """The environment lines of a run folder ([] for a folder from before they were recorded)."""
    path = Path(run_dir) / "environment.jsonl"
    if not path.is_file():
        return []
    return [json.loads(s) for s in path.read_text().splitlines() if s.strip()]


def differences(runs: Sequence[tuple[str, int, list[dict]]]) -> list[str]:
    """One line per environment field whose value differs between the runs (group label, order, environment
    lines), each value with the runs that had it; runs without a record are named once."""

    def named(members: list[tuple[str, int]]) -> str:
        by_group: dict[str, list[str]] = {}
        for label, order in members:
            by_group.setdefault(label, []).append(str(order))
        return "; ".join(f"{label} order{'s' * (len(o) > 1)} {','.join(o)}" for label, o in by_group.items())

    lines = []
    unknown = [(label, order) for label, order, envs in runs if not envs]
    if unknown and len(unknown) < len(runs):
        lines.append(f"not recorded (runs from before errwise recorded it): {named(unknown)}")
    for key in COMPARED:
        seen: dict[str, list[tuple[str, int]]] = {}
        for label, order, envs in runs:
            for value in dict.fromkeys(str(e.get(key)) for e in envs):
                seen.setdefault(value, []).append((label, order))
        if len(seen) > 1:
            lines.append(f"{key}: " + " | ".join(f"{v} ({named(m)})" for v, m in seen.items()))
    return lines
