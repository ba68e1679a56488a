"""Label scoring: the pruned path equals exhaustive scoring, which equals one full forward per candidate."""

from __future__ import annotations

import pytest
import torch

from errwise.errors import ErrwiseError
from errwise.model import (
    build_labels,
    feed_groups,
    label_ids,
    load_model,
    pick_attention,
    row_logsumexp,
    score_candidates,
)

NAMES = [
    "place of birth",
    "place of death",
    "employer",
    "founded by",
    "located in",
    "capital of",
    "spouse",
    "sibling",
    "member of",
    "educated at",
    "notable work",
    "headquarters location",
]
SENTENCES = [
    "Ana Velk was born in Lisbon and later worked for Orvane .",
    "The band Quiet Harbour signed Mira Tosk in 1998 .",
    "Doren is the capital of the small province of Aslet .",
    "Tomas Reil married Ilse Varn in a quiet ceremony .",
    "Brightwater Labs , founded by Oona Pell , moved to Kestrel City .",
]


def reference_scores(model, tok, prompts, names, mean=False):
    """The slow reference: a full forward pass over prompt + label for every candidate."""
    out = torch.zeros(len(prompts), len(names))
    for i, p in enumerate(prompts):
        for j, n in enumerate(names):
            a = label_ids(tok, n)
            with torch.no_grad():
                lp = torch.log_softmax(model(torch.tensor([p + a])).logits[0].float(), -1)
            s = sum(lp[len(p) - 1 + k, a[k]] for k in range(len(a)))
            out[i, j] = s / len(a) if mean else s
    return out


# Names sharing token prefixes, some a prefix of another's name tokens ("member" / "member of"): a deep trie.
SHARED = [
    "country of citizenship",
    "member of political party",
    "country",
    "member",
    "participant of",
    "member of",
    "country of origin",
    "participant",
    "part of",
    "located in the administrative territorial entity",
    "located in or next to body of water",
    "location",
]


def encode_prompts(tok, sentences):
    return [tok(f"Sentence: {s}\nRelation:")["input_ids"] for s in sentences]


def test_label_trie_holds_every_label_once(tiny):
    model, tok = tiny
    labels = build_labels(tok, SHARED)
    seqs = [label_ids(tok, n) for n in SHARED]
    prefixes = {tuple(s[:k]) for s in seqs for k in range(1, len(s) + 1)}
    assert len(labels.token) == len(prefixes) < sum(map(len, seqs))  # shared prefixes are stored once
    for c, s in enumerate(seqs):
        path, n = [], int(labels.leaf[c])
        while n >= 0:  # walk up from the leaf: the label's tokens, and every ancestor flagged
            path.append(int(labels.token[n]))
            assert labels.ancestor[int(labels.leaf[c]), n] == (n != int(labels.leaf[c]))
            n = int(labels.parent[n])
        assert path[::-1] == s and int(labels.depth[labels.leaf[c]]) == len(s)
        assert not labels.inner[labels.leaf[c]]  # labels end with the end token: a leaf is never inner
    assert labels.ancestor.sum(1).tolist() == (labels.depth - 1).tolist()
    member = label_ids(tok, "member")[:-1]
    assert label_ids(tok, "member of")[: len(member)] == member  # the name tokens are a prefix


@pytest.mark.parametrize("attn", ["sdpa", "eager"])  # eager: what bf16 on CPU uses (pick_attention)
@pytest.mark.parametrize("score", ["sum", "mean"])
@pytest.mark.parametrize("names", [NAMES, SHARED], ids=["names", "shared-prefixes"])
def test_scoring_matches_reference(tiny, tiny_model_dir, score, names, attn):
    model, tok = tiny
    if attn != "sdpa":
        model = load_model(
            str(tiny_model_dir), device=torch.device("cpu"), dtype=torch.float32, lora=False, attn_implementation=attn
        ).eval()
    assert model.config._attn_implementation == attn
    # Prompts of different lengths share a batch (left padding), one of them very short.
    prompts = encode_prompts(tok, SENTENCES) + [tok("Relation:")["input_ids"]]
    labels = build_labels(tok, names)
    ref = reference_scores(model, tok, prompts, names, mean=score == "mean")
    pred_ex, scores_ex = score_candidates(model, prompts, labels, pad_id=tok.pad_token_id, score=score, exhaustive=True)
    assert torch.allclose(scores_ex, ref, atol=1e-4)
    assert pred_ex.tolist() == ref.argmax(1).tolist()
    for max_tokens, widths in ((2048, (4, 4, 16)), (3, (1,)), (64, (2, 3))):  # chunked rows, 1 node per round
        pred, scores = score_candidates(
            model,
            prompts,
            labels,
            pad_id=tok.pad_token_id,
            score=score,
            max_tokens=max_tokens,
            widths=widths,
        )
        assert pred.tolist() == pred_ex.tolist()
        scored = torch.isfinite(scores)
        assert scored[torch.arange(len(pred)), pred].all()
        assert torch.allclose(scores[scored], ref[scored], atol=1e-4)
        assert torch.allclose(scores[scored], scores_ex[scored], atol=1e-6)


# Names whose first token is a whole word in the tiny tokenizer, shared by some ("the", "the head"), so ranking by
# the first token leaves ties to resolve. In SHARED every name starts with the same token there (a bare space).
FIRST_TOKENS = [
    "the head",
    "head",
    "the tail",
    "tail of the",
    "relation",
    "the",
    "of the head",
    "tail",
    "in",
    "of",
    "was born in",
    "founded by",
    "place of birth",
    "country",
    "member of",
]


@pytest.mark.parametrize("score", ["sum", "mean"])
@pytest.mark.parametrize("names", [FIRST_TOKENS, SHARED], ids=["first-tokens", "shared-prefixes"])
def test_first_token_search_ranks_by_first_token_and_breaks_ties_exactly(tiny, score, names):
    """eval.search first_token: the label with the most probable first token; among labels sharing it, the best
    by full scoring (the slow reference), so a shared first token is resolved exactly."""
    model, tok = tiny
    prompts = encode_prompts(tok, SENTENCES) + [tok("Relation:")["input_ids"]]
    labels = build_labels(tok, names)
    ref = reference_scores(model, tok, prompts, names, mean=score == "mean")
    first = [label_ids(tok, n)[0] for n in names]
    pred, scores = score_candidates(model, prompts, labels, pad_id=tok.pad_token_id, score=score, first_token=True)
    sizes = []
    for i, p in enumerate(prompts):
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([p])).logits[0, -1].float(), -1)
        best = max(set(first), key=lambda t: float(lp[t]))
        group = [c for c in range(len(names)) if first[c] == best]
        expected = max(group, key=lambda c: (float(ref[i, c]), -c))
        assert int(pred[i]) == expected
        assert torch.isfinite(scores[i, expected])
        if len(group) == 1:  # alone under the best first token: chosen without further scoring
            assert torch.isinf(scores[i]).sum() == len(names) - 1
        sizes.append(len(group))
    if names is FIRST_TOKENS:  # both paths ran: a label alone under its first token, and a tie resolved by search
        assert min(sizes) == 1 < max(sizes), sizes
    else:  # one first token for all: the exact search
        assert pred.tolist() == ref.argmax(1).tolist()


def test_vocabulary_projection_gets_a_contiguous_input(tiny):
    """With `logits_to_keep` the model slices the hidden states; the head must get a contiguous copy (on a
    strided view a CPU linear layer copies the whole weight once per row)."""
    model, _ = tiny
    seen = []
    handle = model.get_output_embeddings().register_forward_pre_hook(lambda _, a: seen.append(a[0].is_contiguous()))
    try:
        with torch.no_grad():
            logits = model(torch.tensor([[5, 6, 7, 8], [5, 6, 7, 9]]), logits_to_keep=2).logits
    finally:
        handle.remove()
    assert seen == [True] and logits.shape[1] == 2


def test_bf16_on_cpu_uses_eager_attention_and_trains(tiny_model_dir):
    cpu = torch.device("cpu")
    assert pick_attention(cpu, torch.float32) == "sdpa" and pick_attention(cpu, torch.bfloat16) == "eager"
    model = load_model(str(tiny_model_dir), device=cpu, dtype=torch.bfloat16, lora=True)
    assert model.config._attn_implementation == "eager"
    assert next(model.parameters()).dtype == torch.bfloat16
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert torch.isfinite(loss) and grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("score", ["sum", "mean"])
def test_ties_go_to_the_lower_index(tiny, score):
    """A model that predicts the uniform distribution: every token has the same log-prob, so labels of equal
    length tie exactly (sum: the shortest ones win)."""
    model, tok = tiny
    prompts = encode_prompts(tok, SENTENCES[:3])
    labels = build_labels(tok, SHARED)
    handle = model.get_output_embeddings().register_forward_hook(lambda m, i, o: torch.zeros_like(o))
    try:
        pred, _ = score_candidates(model, prompts, labels, pad_id=tok.pad_token_id, score=score)
        pred_ex, scores_ex = score_candidates(
            model, prompts, labels, pad_id=tok.pad_token_id, score=score, exhaustive=True
        )
    finally:
        handle.remove()
    assert pred.tolist() == pred_ex.tolist()
    if score == "sum":
        shortest = min(range(len(SHARED)), key=lambda c: (int(labels.lengths[c]), c))
        assert pred.tolist() == [shortest] * len(prompts)
        tied = (labels.lengths == labels.lengths[shortest]).nonzero().squeeze(1)
        assert len(tied) > 1 and (scores_ex[:, tied] == scores_ex[:, shortest : shortest + 1]).all()


def test_pruning_skips_candidates_that_cannot_win(tiny):
    """With a label whose first token is near-certain, the pruned path scores few candidates."""
    model, tok = tiny
    prompts = encode_prompts(tok, SENTENCES)
    labels = build_labels(tok, NAMES)
    # Make the model strongly prefer the tokens of NAMES[2] ("employer" + end) by biasing the output layer.
    head = model.get_output_embeddings()
    bias = torch.zeros(head.weight.shape[0])
    bias[labels.ids[2, : labels.lengths[2]]] = 30.0
    handle = head.register_forward_hook(lambda m, i, o: o + bias)
    try:
        pred, scores = score_candidates(model, prompts, labels, pad_id=tok.pad_token_id)
        pred_ex, _ = score_candidates(model, prompts, labels, pad_id=tok.pad_token_id, exhaustive=True)
    finally:
        handle.remove()
    assert pred.tolist() == pred_ex.tolist()
    assert torch.isfinite(scores).sum(1).max() < len(NAMES)


def test_duplicate_label_names_are_rejected(tiny):
    _, tok = tiny
    with pytest.raises(ErrwiseError, match="same name"):
        build_labels(tok, ["spouse", "spouse"])


def test_answer_only_loss_equals_the_full_sequence_reference(tiny):
    """Left padding + logits at the answer positions only gives the loss of a plain right-padded forward over
    the whole sequence."""
    import torch

    from errwise.prompts import Example
    from errwise.train import answer_nll, collate, encode

    model, tok = tiny
    exs = [
        Example("Sentence: a b c\nRelation:", "founded by"),
        Example("Short\nRelation:", "x"),
        Example("Q:", "p q r s"),
    ]
    encoded = [encode(tok, ex, 64) for ex in exs]
    with torch.no_grad():
        total, n = answer_nll(model, collate(encoded, tok.pad_token_id))
        fast = total / n  # the mean answer-token cross-entropy the trainer uses
        ref = []
        for ids, lab in encoded:  # one at a time, no padding at all
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
            labels = torch.tensor(lab[1:])
            ref.append(torch.nn.functional.cross_entropy(logits[labels != -100], labels[labels != -100]))
    assert torch.allclose(fast, torch.stack(ref), atol=1e-5)


@pytest.mark.parametrize("native, warned", [(False, True), (True, False), (None, False)])
def test_bf16_on_a_cpu_without_native_bf16_warns(monkeypatch, capsys, native, warned):
    import errwise.model as model_module

    monkeypatch.setattr(model_module, "cpu_has_native_bf16", lambda: native)
    assert model_module.pick_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    assert ("without native bf16" in capsys.readouterr().err) == warned
    assert model_module.pick_dtype("float32", torch.device("cpu")) == torch.float32
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "env, native, device, expected",
    [
        (None, True, "cpu", torch.bfloat16),  # AVX512-BF16 or AMX: bf16
        (None, False, "cpu", torch.float32),  # AVX2 only: bf16 emulated, fp32
        (None, None, "cpu", torch.float32),  # not x86 Linux: nothing claimed, fp32
        ("1", False, "cpu", torch.bfloat16),
        ("0", True, "cpu", torch.float32),
        ("0", False, "cuda", torch.bfloat16),  # the CPU switch does not touch a GPU
        (None, True, "mps", torch.float32),
    ],
)
def test_auto_dtype_takes_bf16_where_the_cpu_has_it(monkeypatch, capsys, env, native, device, expected):
    import errwise.model as model_module

    monkeypatch.setattr(model_module, "cpu_has_native_bf16", lambda: native)
    if env is None:
        monkeypatch.delenv("ERRWISE_CPU_BF16", raising=False)
    else:
        monkeypatch.setenv("ERRWISE_CPU_BF16", env)
    assert model_module.pick_dtype("auto", torch.device(device)) == expected
    assert capsys.readouterr().err == ""  # auto never takes the slow path, so it never warns


def test_auto_dtype_override_that_is_no_switch_is_one_error(monkeypatch):
    import errwise.model as model_module

    monkeypatch.setenv("ERRWISE_CPU_BF16", "yes")
    with pytest.raises(ErrwiseError, match="ERRWISE_CPU_BF16='yes': use 1"):
        model_module.pick_dtype("auto", torch.device("cpu"))


@pytest.mark.parametrize(
    "text, native",
    [
        ("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n", False),  # AMD EPYC seen here: AVX2 only
        ("flags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n", True),
        ("flags\t\t: avx2 avx512f avx512_vnni\n", False),
        ("processor\t: 0\nFeatures\t: fp asimd bf16\n", None),  # aarch64: no x86 flags line, nothing claimed
    ],
)
def test_cpu_bf16_check_reads_cpuinfo_flags(tmp_path, text, native):
    from errwise.model import cpu_has_native_bf16

    (tmp_path / "cpuinfo").write_text(text)
    assert cpu_has_native_bf16(str(tmp_path / "cpuinfo")) is native
    assert cpu_has_native_bf16(str(tmp_path / "missing")) is None


def test_row_logsumexp_chunks_give_the_same_bits():
    torch.manual_seed(0)
    for dtype in (torch.bfloat16, torch.float32):
        logits = (torch.randn(3, 5, 1000) * 8).to(dtype)
        whole = torch.logsumexp(logits.float(), dim=-1)
        for chunk in (1, 999, 1000, 4321, 1 << 18):  # one row at a time, rows split unevenly, all at once
            part = row_logsumexp(logits, chunk=chunk)
            assert part.dtype == torch.float32 and part.shape == (3, 5)
            assert torch.equal(part, whole)


def test_feed_groups_cover_every_feeding_row_once_in_batch_order():
    count = torch.tensor([3, 0, 20, 2, 19, 3, 0, 2])
    groups = feed_groups(count, max_tokens=2048)
    rows = torch.cat(groups).tolist()
    assert sorted(rows) == [0, 2, 3, 4, 5, 7]  # every row with a node, once; none without
    assert all(g.tolist() == sorted(g.tolist()) for g in groups)  # batch order within a call
    # padding is the cost: the long rows (19, 20) go apart from the short ones (2, 3)
    assert sorted(g.tolist() for g in groups) == [[0, 3, 5, 7], [2, 4]]
    # a call costs as much as 32 tokens: rows of 1 and 4 nodes share a call (4 padded < 32), apart they would not
    assert [g.tolist() for g in feed_groups(torch.tensor([1, 4]), max_tokens=2048)] == [[0, 1]]
    assert [g.tolist() for g in feed_groups(torch.tensor([1, 4]), max_tokens=2048, call_cost=1)] == [[0], [1]]
    # max_tokens bounds a call's positions; a single row above it still goes alone
    count = torch.tensor([4, 4, 4, 4, 9])
    small = feed_groups(count, max_tokens=8)
    assert all(len(g) * int(count[g].max()) <= 8 or len(g) == 1 for g in small)
    assert sorted(torch.cat(small).tolist()) == [0, 1, 2, 3, 4]
    assert feed_groups(torch.zeros(4, dtype=torch.long), max_tokens=64) == []


@pytest.mark.parametrize("names", [NAMES, SHARED], ids=["names", "shared-prefixes"])
def test_a_score_bonus_keeps_the_search_exact(tiny, names):
    """Per-candidate bonuses (calibration) shift every label's score; the pruned search still returns the argmax
    of reference + bonus, with bonuses large enough to reorder the answers and one bonus on a single label."""
    model, tok = tiny
    prompts = encode_prompts(tok, SENTENCES) + [tok("Relation:")["input_ids"]]
    labels = build_labels(tok, names)
    ref = reference_scores(model, tok, prompts, names)
    g = torch.Generator().manual_seed(0)
    spread = float((ref.max(1).values - ref.min(1).values).max())
    lone = torch.zeros(len(names))
    lone[ref.mean(0).argmin()] = spread + 1.0  # the label that was never best wins every prompt
    assert (ref + lone).argmax(1).tolist() != ref.argmax(1).tolist()  # so the answers change: the test can fail
    for bonus in (torch.rand(len(names), generator=g) * spread, lone):
        want = (ref + bonus).argmax(1)
        for widths in ((4, 4, 16), (1,)):
            pred, scores = score_candidates(model, prompts, labels, pad_id=tok.pad_token_id, bonus=bonus, widths=widths)
            assert pred.tolist() == want.tolist()
            scored = torch.isfinite(scores)
            assert torch.allclose(scores[scored], (ref + bonus)[scored], atol=1e-4)


def test_a_score_bonus_is_refused_where_the_search_cannot_bound_it(tiny):
    model, tok = tiny
    labels = build_labels(tok, NAMES)
    prompts = encode_prompts(tok, SENTENCES[:1])
    for kwargs in ({"score": "mean"}, {"first_token": True}, {"bonus": -torch.ones(len(NAMES))}):
        with pytest.raises(ErrwiseError, match="bonus"):
            score_candidates(
                model, prompts, labels, pad_id=tok.pad_token_id, **{"bonus": torch.ones(len(NAMES)), **kwargs}
            )
