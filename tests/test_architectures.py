"""Any causal LM: one table of tiny random architectures through the same contract.

For each architecture (built from its transformers config, a few thousand parameters, saved as a local model
folder with a tiny BPE tokenizer) through errwise's own loading path:
exact candidate scoring equals the full-forward reference; one LoRA step lowers the loss on a repeated batch;
every linear layer of every block gets an adapter (fused projections too); a checkpoint saves and reloads to
identical predictions; the memory's hidden-state embedding equals an unpadded forward's.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from conftest import build_tiny_tokenizer, tokenizer_texts
from errwise.data.types import Relation, RelationInstance
from errwise.errors import ErrwiseError
from errwise.evaluate import candidate_scores, inference_copy, last_hidden, prompt_ids, shared_prefix
from errwise.model import (
    build_labels,
    encode_prefix,
    gguf_identity,
    linear_modules,
    load_model,
    load_tokenizer,
    resolve_model_path,
    save_checkpoint,
    score_candidates,
)
from errwise.train import answer_nll, collate
from test_model import NAMES, SENTENCES, reference_scores

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
# name: (config class name, its arguments beyond vocabulary and special tokens)
ARCHITECTURES = {
    "llama": ("LlamaConfig", dict(SMALL, num_key_value_heads=2)),
    "qwen2": ("Qwen2Config", dict(SMALL, num_key_value_heads=2)),
    "qwen3": ("Qwen3Config", dict(SMALL, num_key_value_heads=2, head_dim=8)),
    "mistral": ("MistralConfig", dict(SMALL, num_key_value_heads=2)),
    "gemma2": ("Gemma2Config", dict(SMALL, num_key_value_heads=2, head_dim=8)),
    "gemma3": ("Gemma3TextConfig", dict(SMALL, num_key_value_heads=2, head_dim=8)),
    "phi3": ("Phi3Config", dict(SMALL, num_key_value_heads=2)),
    "gpt_neox": ("GPTNeoXConfig", dict(SMALL)),
    "olmo2": ("Olmo2Config", dict(SMALL, num_key_value_heads=2)),
    "gpt2": ("GPT2Config", dict(n_embd=32, n_layer=2, n_head=4, n_positions=512)),
}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer(tokenizer_texts())


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def arch_dir(request, tokenizer, tmp_path_factory):
    import transformers

    cls_name, kwargs = ARCHITECTURES[request.param]
    special = dict(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.eos_token_id
    )
    cfg = getattr(transformers, cls_name)(vocab_size=len(tokenizer), **special, **kwargs)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp(request.param)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _prompts(tok):
    return [tok(f"Sentence: {s}\nRelation:")["input_ids"] for s in SENTENCES[:3]]


def _load(path, **kw):
    return load_model(str(path), device=torch.device("cpu"), dtype=torch.float32, **kw)


def test_scoring_equals_the_full_forward_reference(arch_dir):
    tok = load_tokenizer(str(arch_dir))
    model = _load(arch_dir, lora=False).eval()
    prompts, names = _prompts(tok), NAMES[:6]
    ref = reference_scores(model, tok, prompts, names)
    labels = build_labels(tok, names)
    for exhaustive in (False, True):
        pred, scores = score_candidates(model, prompts, labels, pad_id=tok.pad_token_id, exhaustive=exhaustive)
        assert pred.tolist() == ref.argmax(1).tolist()
        finite = torch.isfinite(scores)
        assert finite.all() or not exhaustive
        torch.testing.assert_close(scores[finite], ref[finite], atol=1e-4, rtol=1e-4)


def test_a_shared_prefix_encoded_once_gives_the_full_forward_reference(arch_dir):
    """The prompts' common first tokens encoded once (batch 1) and attended to by every row, behind each row's left
    padding: the same scores as the reference, at every depth of the search. So too with the prompts encoded a few
    at a time (forward_batch) and searched together, their caches padded to the longest, with the prefix or without."""
    tok = load_tokenizer(str(arch_dir))
    model = _load(arch_dir, lora=False).eval()
    lead = tok("What is the relation of the head to the tail?\n")["input_ids"]
    prompts, names = [lead + p for p in _prompts(tok)], NAMES[:6]
    shared = shared_prefix(prompts)
    assert all(p[: len(shared)] == shared for p in prompts) and len(shared) >= len(lead)  # lead + "Sentence:" ...
    ref = reference_scores(model, tok, prompts, names)
    prefix = encode_prefix(model, shared)
    labels = build_labels(tok, names)
    rest = [p[len(shared) :] for p in prompts]
    assert len({len(p) for p in rest}) == len(rest)  # every part padded differently
    for exhaustive, forward_batch, share in itertools.product((False, True), (None, 1, 2), (True, False)):
        pred, scores = score_candidates(
            model,
            rest if share else prompts,
            labels,
            pad_id=tok.pad_token_id,
            exhaustive=exhaustive,
            prefix=prefix if share else None,
            forward_batch=forward_batch,
        )
        assert pred.tolist() == ref.argmax(1).tolist()
        finite = torch.isfinite(scores)
        torch.testing.assert_close(scores[finite], ref[finite], atol=1e-4, rtol=1e-4)


def test_evaluation_merges_lora_into_a_copy_and_leaves_the_model_as_it_was(arch_dir):
    tok = load_tokenizer(str(arch_dir))
    model = _load(arch_dir, lora=True)
    with torch.no_grad():  # adapters that change the answers (fresh LoRA B is zero)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.5)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    xs = [RelationInstance(f"u{i}", tuple(s.split()), (0, 1), (2, 3), "r") for i, s in enumerate(SENTENCES[:4])]
    cands = [Relation(f"r{i}", n) for i, n in enumerate(NAMES[:6])]
    merged = candidate_scores(model, tok, xs, cands, exhaustive=True)[1]
    with model.disable_adapter():
        plain = candidate_scores(model, tok, xs, cands, exhaustive=True)[1]
    assert model.training  # its mode restored
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # its weights untouched
    with inference_copy(model) as m:
        assert not hasattr(m, "peft_config") and not any("lora" in n for n, _ in m.named_parameters())
    prompts = prompt_ids(tok, xs, None, 256)
    ref = reference_scores(model.eval(), tok, prompts, [c.name for c in cands])  # through the adapters, unmerged
    torch.testing.assert_close(merged, ref, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(merged, plain, atol=1e-3)  # the adapters count


def test_lora_adapts_every_linear_layer_learns_and_reloads(arch_dir, tmp_path):
    from peft.tuners.lora import LoraLayer

    tok = load_tokenizer(str(arch_dir))
    base = _load(arch_dir, lora=False)
    linear = linear_modules(base)
    block_linears = {n for n, m in base.named_modules() if n.rsplit(".", 1)[-1] in linear and not list(m.children())}
    torch.manual_seed(0)
    model = _load(arch_dir, lora=True, lora_r=4, lora_alpha=8)
    adapted = {n.removeprefix("base_model.model.") for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    assert block_linears and adapted == block_linears  # every linear layer but the output layer, none else

    # one LoRA step on a repeated batch lowers its loss
    prompts = _prompts(tok)
    answers = [tok(" " + n, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for n in NAMES[:3]]
    batch = collate([(p + a, [-100] * len(p) + a) for p, a in zip(prompts, answers)], tok.pad_token_id)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)

    def loss() -> torch.Tensor:
        nll, n = answer_nll(model, batch)
        return nll.sum() / n.sum()

    before = loss()
    before.backward()
    opt.step()
    with torch.no_grad():
        assert loss().item() < before.item()

    # a checkpoint saves and reloads to identical predictions
    model.eval()
    labels = build_labels(tok, NAMES[:6])
    pred, scores = score_candidates(model, prompts, labels, pad_id=tok.pad_token_id, exhaustive=True)
    save_checkpoint(model, tmp_path / "ckpt")
    again = _load(arch_dir, lora=True, adapter=tmp_path / "ckpt").eval()
    pred2, scores2 = score_candidates(again, prompts, labels, pad_id=tok.pad_token_id, exhaustive=True)
    assert pred2.tolist() == pred.tolist()
    torch.testing.assert_close(scores2, scores)
    # the reloaded adapter saves to the same bytes (PEFT writes target_modules in a set's order, which depends
    # on how the set was built; errwise writes it sorted, so a copied checkpoint equals a trained one)
    save_checkpoint(again, tmp_path / "again")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "ckpt" / name).read_bytes(), name
    modules = json.loads((tmp_path / "ckpt" / "adapter_config.json").read_text())["target_modules"]
    assert modules == sorted(modules) and len(modules) == len(block_linears)


def test_a_shared_prefix_in_training_gives_the_full_rows_loss_and_gradients(arch_dir):
    """Training's `collate(..., shared)`: the prompts' common tokens run once, the rows on their keys/values, with
    gradients through them: the same answer losses and adapter gradients as the full rows."""
    tok = load_tokenizer(str(arch_dir))
    torch.manual_seed(0)
    model = _load(arch_dir, lora=True, lora_r=4, lora_alpha=8)
    for name, p in model.named_parameters():
        if "lora_" in name:
            torch.nn.init.normal_(p, std=0.3)
    prompts = [tok(f"What is the relation here?\nSentence: {s}\nRelation:")["input_ids"] for s in SENTENCES[:3]]
    answers = [tok(" " + n, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for n in NAMES[:3]]
    rows = [(p + a, [-100] * len(p) + a) for p, a in zip(prompts, answers)]
    shared = len(shared_prefix(prompts))
    assert shared >= 4
    model.eval()  # gradients still flow; eval only turns off dropout (GPT-2's), whose masks differ with the shapes
    results = []
    for k in (0, shared):
        model.zero_grad()
        nll, _ = answer_nll(model, collate(rows, tok.pad_token_id, k))
        nll.sum().backward()
        results.append((nll.detach(), [p.grad.clone() for n, p in model.named_parameters() if "lora_" in n]))
    (full, g_full), (once, g_once) = results
    torch.testing.assert_close(once, full, atol=1e-4, rtol=1e-4)
    for a, b in zip(g_once, g_full):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-3)


def test_memory_embedding_equals_an_unpadded_forward(arch_dir):
    tok = load_tokenizer(str(arch_dir))
    model = _load(arch_dir, lora=False).eval()
    prompts = _prompts(tok)
    assert len({len(p) for p in prompts}) > 1  # the batch is padded
    feats = last_hidden(model, tok, prompts, batch_size=3)  # (3, hidden)
    assert feats.shape == (3, model.config.hidden_size)
    with torch.no_grad():
        for i, p in enumerate(prompts):
            alone = model(torch.tensor([p]), output_hidden_states=True).hidden_states[-1][0, -1]
            torch.testing.assert_close(torch.from_numpy(feats[i]), alone, atol=1e-4, rtol=1e-4)


def test_an_unknown_lora_target_is_one_line_listing_the_linear_modules(tiny_model_dir):
    with pytest.raises(ErrwiseError) as e:
        _load(tiny_model_dir, lora=True, lora_targets=["q_proj", "qkv_proj"])
    msg = str(e.value)
    assert "\n" not in msg and "qkv_proj is not a linear module" in msg
    assert "down_proj, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj" in msg
    model = _load(tiny_model_dir, lora=True, lora_targets=["q_proj", "v_proj"])  # explicit names still work
    assert set(model.peft_config["default"].target_modules) == {"q_proj", "v_proj"}


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda d: str(d / "missing"), "no such model folder"),
        (lambda d: str(d / "missing.gguf"), "no such GGUF file"),
        (lambda d: (d / "empty").mkdir() or str(d / "empty"), "is a folder but not a model (no config.json)"),
        (lambda d: (d / "w.bin").write_bytes(b"x") and str(d / "w.bin"), "is a file but not a .gguf model"),
        (lambda d: (d / "bad.gguf").write_bytes(b"not a gguf file" * 10) and str(d / "bad.gguf"), "cannot load GGUF"),
    ],
)
def test_a_model_that_cannot_be_loaded_is_one_line(tmp_path, monkeypatch, make, expected):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    name = make(tmp_path)
    with pytest.raises(ErrwiseError) as e:
        load_tokenizer(name)
    assert expected in str(e.value) and "\n" not in str(e.value)
    assert not list((tmp_path / "cache").glob("errwise/models/*"))  # nothing half-converted left behind


def test_a_hub_id_is_passed_through_and_a_changed_gguf_gets_a_new_cache_key(tmp_path):
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + bytes(100))
    key = gguf_identity(f)
    assert gguf_identity(f) == key
    f.write_bytes(b"GGUF" + bytes(99) + b"\x01")
    assert gguf_identity(f) != key
    # the key follows the content, not the path or the time: a reinstalled or copied file reuses its conversion
    big = bytearray(b"GGUF" + bytes(40 << 20))
    (tmp_path / "a.gguf").write_bytes(big)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.gguf").write_bytes(big)
    assert gguf_identity(tmp_path / "a.gguf") == gguf_identity(tmp_path / "sub" / "b.gguf")
    big[-1] = 1  # the last tensor's bytes changed in place, same size
    (tmp_path / "sub" / "b.gguf").write_bytes(big)
    assert gguf_identity(tmp_path / "a.gguf") != gguf_identity(tmp_path / "sub" / "b.gguf")


def test_run_with_a_missing_model_is_one_line_and_writes_nothing(tmp_path, capsys):
    from errwise.cli import main

    out = tmp_path / "run"
    assert main(["run", "--model.name", str(tmp_path / "no" / "such"), "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no such model folder") and "\n" not in err
    assert not out.exists()


def test_a_gguf_conversion_by_another_transformers_version_is_converted_again(tmp_path, monkeypatch):
    """The cache folder records its converter; one made by another version (or unrecorded) is replaced in place,
    one made by this version is reused."""
    import json

    import transformers

    import errwise.model as m

    calls = []

    class Fake:  # stands in for the tokenizer and the model transformers reads from the GGUF file
        hf_quantizer = None
        config = object()

        def save_pretrained(self, folder):
            calls.append(folder)
            (Path(folder) / "config.json").write_text("{}")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(m.AutoTokenizer, "from_pretrained", lambda *a, **k: Fake())
    monkeypatch.setattr(m.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: Fake())
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF" + bytes(100))
    folder = m.gguf_folder(f)
    record = json.loads((folder / "errwise_conversion.json").read_text())
    assert record == {"gguf": "m.gguf", "gguf_identity": gguf_identity(f), "transformers": transformers.__version__}
    assert m.gguf_folder(f) == folder and len(calls) == 2  # reused: model + tokenizer saved once
    for stale in ('{"transformers": "4.56.2"}', None):  # another version's conversion, then an unrecorded one
        (folder / "marker").write_text("old")
        if stale is None:
            (folder / "errwise_conversion.json").unlink()
        else:
            (folder / "errwise_conversion.json").write_text(stale)
        assert m.gguf_folder(f) == folder
        assert not (folder / "marker").exists() and m.converted_by(folder) == transformers.__version__
    assert len(calls) == 6
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # nothing left beside it
