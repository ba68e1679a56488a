"""Content-free calibration (`eval.calibrate content_free`): the prior it divides out, and a run scored with it."""

from __future__ import annotations

import dataclasses

import torch

from errwise.data.types import Relation
from errwise.evaluate import candidate_scores, content_free_bonus, content_free_instances
from errwise.model import build_labels, load_tokenizer
from errwise.rescore import rescore
from errwise.run import eval_instances, load_run_model, make_stream, resume_config, run
from test_run import read_jsonl, tiny_config

RELATIONS = [Relation("a", "founded by"), Relation("b", "place of birth"), Relation("c", "member of")]


def test_the_bonus_is_minus_the_log_prior_and_the_favoured_relation_gets_none(tiny):
    model, tok = tiny
    labels = build_labels(tok, [r.name for r in RELATIONS])
    head = model.get_output_embeddings()
    bias = torch.zeros(head.weight.shape[0])
    bias[labels.ids[1, : labels.lengths[1]]] = 8.0  # the model favours "place of birth" on every input
    handle = head.register_forward_hook(lambda m, i, o: o + bias)
    try:
        bonus = content_free_bonus(model, tok, RELATIONS)
    finally:
        handle.remove()
    assert bonus.shape == (3,) and bonus[1] == 0 and (bonus[[0, 2]] > 1).all()
    # The same number by hand: mean probability over the content-free prompts, -log, shifted to a minimum of 0.
    unbiased = content_free_bonus(model, tok, RELATIONS)
    _, scores = candidate_scores(model, tok, content_free_instances(), RELATIONS, exhaustive=True)
    want = -torch.softmax(scores.double(), 1).mean(0).log()
    assert torch.allclose(unbiased, (want - want.min()).float(), atol=1e-5)


def test_a_run_rescored_calibrated_is_the_calibrated_prediction(tiny_model_dir, tmp_path):
    """rescore --calibrate content_free: the last checkpoint's predictions are the argmax of its exhaustive scores
    plus the content-free bonus, and the rescored folder's config says calibrate while the run's does not."""
    cfg = tiny_config(tiny_model_dir, tmp_path / "replay-0")
    out = run(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, max_test=2)))
    cal = rescore(out, tmp_path / "cal", max_test=2, calibrate="content_free")
    ccfg = resume_config(cal)
    assert ccfg.eval.calibrate == "content_free" and resume_config(out).eval.calibrate == "none"
    stream = make_stream(ccfg)
    tok = load_tokenizer(ccfg.model.name)
    model = load_run_model(ccfg, torch.device("cpu"), out / "checkpoints" / "task_02")
    test = eval_instances(stream, 2, "test")
    seen = tuple(stream.relation(r) for r in stream.seen_relations(2))
    _, scores = candidate_scores(model, tok, test, seen, exhaustive=True)
    want = (scores + content_free_bonus(model, tok, seen)).argmax(1)
    got = [p["pred"] for p in read_jsonl(cal / "predictions" / "task_02.jsonl")]
    assert got == [seen[i].id for i in want.tolist()]
