"""errwise: learning from error cases (after Yin et al., 2025, "Learning Wisdom from Errors").

Before training on a task, the model answers every training instance of the task and every memory
instance (class-incrementally, among all seen relations). The answers split into correct and error cases,
recorded in `error_cases/task_XX.jsonl`. Dual-task fine-tuning: correct cases get the plain instruction;
error cases get the plain instruction (weighted) *and* an instruction that confronts the model's wrong
answer. Instruction-based contrastive tuning: each error case is also put beside memory instances of the
relation it was confused with, with the relations' descriptions, and the model is asked to tell them apart.
Optionally (`rank_weight`) each error case also gets a pairwise ranking loss against its own wrong answer in
the plain instruction: contrastive tuning in the very format and score the model is tested with; and (`mirror_rank`)
its mirror, an instance of the relation it was confused with ranked above the error case's gold, so that the
confused (often previously learned) relation is not pushed down alone.
With `error_scope` learned, only a wrong answer on an instance of a relation the model was already trained on
makes an error case: before training, a new task's instances are answered wrongly mostly because their
relations were never taught (they get old relations' names), which is no learned bias to correct.
With `probe_per_relation` > 0, that many instances of each relation's memory are held out as a probe: answered
with the others before each round, never trained on. The replayed memory is memorised (almost never answered
wrongly); the probe shows the confusions the model makes on old relations (gold r answered r'), and each one
makes error-focused examples from r's replayed instances (confronted with r', beside instances of r').
With `distill_weight` > 0 (LwF), the model before the task's training scores the old relations' labels after each
training instance's plain prompt; the task's first round keeps the plain examples of those instances near that
view (the KL objective of train.py), recorded in `distill/task_XX.jsonl`.
Every part is switchable (ErrwiseConfig, the `errwise.*` options) for the ablations.
"""

from __future__ import annotations

import dataclasses
import json
import random

import torch

from errwise import distributed
from errwise.config import ErrwiseConfig
from errwise.data.types import RelationInstance, Task
from errwise.methods.protocol import TaskContext
from errwise.prompts import Example, anchor_instance, confront_example, contrastive_example
from errwise.train import soft_targets


class Errwise:
    def __init__(self, cfg: ErrwiseConfig):
        self.cfg = cfg
        self.cases: list[tuple[RelationInstance, str, str]] = []  # (instance, source, predicted relation)
        self.consolidation_cases: list[tuple[RelationInstance, str, str]] = []  # the same, in that round
        self.targets: dict[str, tuple[tuple[str, float], ...]] = {}  # uid -> distillation targets (first round)

    def begin_task(self, ctx: TaskContext) -> None:
        probe = self._probe(ctx)  # with probe_unseen, this task's probe is no training data
        train = [x for x in ctx.task.train if x.uid not in probe]
        self.cases = self._responses(ctx, [("train", train), *self._memory_pools(ctx, probe)], "initial")
        self._record(ctx, self.cases, f"task_{ctx.task.index:02d}.jsonl")
        self.targets = self._distill_targets(ctx, train)

    def _distill_targets(self, ctx: TaskContext, train: list[RelationInstance]) -> dict[str, tuple]:
        """The model's view, before training, of the old relations on the task's training instances: per uid, the
        distill_top_k best old labels after the plain prompt and their softmax (recorded in distill/task_XX.jsonl).
        Only the first round's plain examples of these instances carry them: in the consolidation round the memory's
        instances are their relations' own, which the round trains plainly (the previous model's view of a memorised
        instance is its gold), and the weights before the task are gone by then."""
        c = self.cfg
        old = [r for r in ctx.seen if r.id not in ctx.task.relations]
        if not c.distill_weight or len(old) < 2 or not train:
            return {}
        examples = [ctx.plain(x) for x in train]
        targets = distributed.map_sharded(
            lambda exs: soft_targets(
                ctx.model,
                ctx.tok,
                exs,
                [r.name for r in old],
                top_k=c.distill_top_k,
                temperature=c.distill_temperature,
                max_length=ctx.cfg.train.max_length,
                batch_size=ctx.cfg.eval.batch_size,
            ),
            examples,
        )
        rel_id = {r.name: r.id for r in old}
        rows = [
            {"uid": x.uid, "gold": x.relation, "targets": [[rel_id[n], round(p, 4)] for n, p in t]}
            for x, t in zip(train, targets)
        ]
        (ctx.run_dir / "distill").mkdir(exist_ok=True)
        (ctx.run_dir / "distill" / f"task_{ctx.task.index:02d}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows)
        )
        return {x.uid: t for x, t in zip(train, targets)}

    def held_out(self, ctx: TaskContext) -> dict[str, list[RelationInstance]]:
        """With probe_unseen: the probe of the task's relations, drawn from its training data before training
        (seeded by the relation: the same at every task and on resume), never trained on; the loop keeps it in
        memory."""
        return self._held_out(ctx.task, ctx.cfg.train.seed)

    def _held_out(self, task: Task, seed: int) -> dict[str, list[RelationInstance]]:
        k = self.cfg.probe_per_relation
        if not (k and self.cfg.probe_unseen):
            return {}
        return {rel: _draw(rel, [x for x in task.train if x.relation == rel], k, seed) for rel in task.relations}

    def _probe(self, ctx: TaskContext) -> set[str]:
        """uids of the probe: per relation, `probe_per_relation` of its memory (or, with probe_unseen, of its
        training data, held out of training), the same at every task, so it is never trained on (after its own
        task's first round, where a probe chosen from the memory was ordinary training data)."""
        k = self.cfg.probe_per_relation
        if not k:
            return set()
        if self.cfg.probe_unseen:
            tasks = ctx.stream.tasks[: ctx.task.index + 1]
            return {x.uid for t in tasks for xs in self._held_out(t, ctx.cfg.train.seed).values() for x in xs}
        return {x.uid for rel, xs in ctx.memory.items() for x in _draw(rel, xs, k, ctx.cfg.train.seed)}

    def _memory_pools(self, ctx: TaskContext, probe: set[str]) -> list[tuple[str, list[RelationInstance]]]:
        xs = ctx.memory_instances()
        pools = [("memory", [x for x in xs if x.uid not in probe])]
        return pools + [("probe", [x for x in xs if x.uid in probe])] if probe else pools

    def _responses(self, ctx: TaskContext, pools, when: str) -> list[tuple[RelationInstance, str, str]]:
        """(instance, source, predicted relation) for every instance of the pools; unmined pools count as correct."""
        cases = []
        for source, xs in pools:
            mine = self.cfg.split_by_correctness and (source != "memory" or self.cfg.memory_errors)
            if mine and xs:
                preds = ctx.predict(xs, desc=f"T{ctx.task.index + 1} {when} {source}")
            else:  # ablations "no split" / "current-task errors only": replayed as correct cases
                preds = [x.relation for x in xs]
            cases += [(x, source, p) for x, p in zip(xs, preds)]
        return cases

    def _record(self, ctx: TaskContext, cases, name: str) -> None:
        _write_rows(ctx, name, error_case_rows(cases))

    def training_examples(self, ctx: TaskContext) -> list[Example]:
        learned = {r.id for r in ctx.seen} - set(ctx.task.relations)
        rng = random.Random(ctx.cfg.train.seed + ctx.task.index)
        return self._examples(ctx, self.cases, learned, rng, self.targets)

    def consolidation_examples(self, ctx: TaskContext) -> list[Example]:
        """The memory of every seen relation (this task's included), answered by the model after the first
        round: its error cases now are mostly old relations lost to the new ones (forgetting), and get the
        same error-focused treatment as the initial errors, in a short class-balanced round."""
        cases = self._responses(ctx, self._memory_pools(ctx, self._probe(ctx)), "consolidation")
        self.consolidation_cases = cases
        self._record(ctx, cases, f"task_{ctx.task.index:02d}_consolidation.jsonl")
        learned = {r.id for r in ctx.seen}  # this task's relations have been trained on by now
        rng = random.Random(ctx.cfg.train.seed + ctx.task.index + 500)
        return self._examples(ctx, cases, learned, rng, record=True)

    def _record_rivals(self, ctx: TaskContext) -> None:
        """errwise.pair_record: each memory instance's rival with the model as the task leaves it (after its
        consolidation round, where the newest task's pull is gone), the seen relation other than its gold with the
        best exact score (the answer itself when it is wrong), and the rival's probability (softmax over the seen
        relations' scores, as the extractor gives it), in error_cases/task_XX_rivals.jsonl for later rounds."""
        probe = self._probe(ctx)
        xs = [x for x in ctx.memory_instances() if x.uid not in probe]
        ids = [r.id for r in ctx.seen]
        rows = []
        for x, row in zip(xs, ctx.scores(xs, desc=f"T{ctx.task.index + 1} rivals")):
            probs = torch.tensor(row).softmax(-1)
            gold = ids.index(x.relation)
            probs_other = probs.clone()
            probs_other[gold] = -1.0
            rival = int(probs_other.argmax())
            p_rival, p_gold = round(float(probs[rival]), 4), round(float(probs[gold]), 4)
            rows.append({"uid": x.uid, "gold": x.relation, "rival": ids[rival], "p_rival": p_rival, "p_gold": p_gold})
        _write_rows(ctx, f"task_{ctx.task.index:02d}_rivals.jsonl", "".join(json.dumps(r) + "\n" for r in rows))

    def _examples(
        self,
        ctx: TaskContext,
        cases,
        learned: set[str],
        rng: random.Random,
        targets: dict | None = None,
        record: bool = False,
    ) -> list[Example]:
        """`learned`: relations the model has been trained on; with error_scope `learned` only a wrong answer on
        an instance of one of them makes an error case (a relation the model was taught, yet got wrong).
        `targets`: distillation targets by uid, carried by the plain example of each training case (once).
        `record`: the round trains the pairs of the confusion record (errwise.pair_record)."""
        c = self.cfg
        probe = self._probe(ctx)
        by_rel: dict[str, list[RelationInstance]] = {
            r: [x for x in xs if x.uid not in probe] for r, xs in ctx.memory.items()
        }
        for x in ctx.task.train:
            # After the memory update the task's relations are in it already; an unseen probe is never shown.
            if x.relation not in ctx.memory and x.uid not in probe:
                by_rel.setdefault(x.relation, []).append(x)
        base: list[Example] = []  # every case once in the plain instruction, as replay trains
        out: list[Example] = []  # the error-focused examples
        confusions: list[tuple[str, str]] = []  # (gold, answered) of every error case, for the anchors
        for x, source, pred in cases:
            wrong_case = pred != x.relation and (c.error_scope == "all" or x.relation in learned)
            if wrong_case:
                if c.contrast_with == "random":
                    pred = _random_partner(ctx, x)
                confusions.append((x.relation, pred))
            if source == "probe":  # never trained on: its error stands for the relation's replayed instances
                if wrong_case:
                    for y in by_rel.get(x.relation, []):
                        xs = self._error_focused(ctx, y, pred, "plain-error", by_rel, rng)
                        out += [dataclasses.replace(e, kind="probe-" + e.kind) for e in xs]  # logged apart
                continue
            kind = "plain" if source == "train" else "memory"
            if not wrong_case:
                base.append(self._distilled(ctx.plain(x, kind=kind), targets))
                continue
            err = ctx.plain(x, kind=kind + "-error", weight=c.error_weight)
            err = dataclasses.replace(err, rejected=ctx.relation(pred).name, rank_weight=c.rank_weight)
            base.append(self._distilled(err, targets))
            out += self._error_focused(ctx, x, pred, kind + "-error", by_rel, rng)
        out += self._anchors(ctx, confusions, rng)
        out += self._swaps(ctx, confusions, by_rel, rng)
        if c.error_fraction is not None and out and base:
            # At a fixed step budget every error-focused example displaces plain training. On a new task nearly
            # every training instance is an initial error (the model has never answered its relations), so
            # without a cap the plain instruction the model is tested with gets a third of replay's passes.
            n = round(c.error_fraction / (1 - c.error_fraction) * len(base))
            if len(out) > n:
                out = rng.sample(out, n)
            elif c.error_upsample:
                # Few errors repeated up to the share: a lone error of the consolidation round became a dozen
                # examples answering its relation, which the model then over-predicted (docs/results.md).
                out = out * (n // len(out)) + rng.sample(out, n % len(out))
        if record:  # on top of the cap, drawn after it: the round's other examples are those errwise makes anyway
            out += self._recorded(ctx, by_rel, rng)
        return base + out

    def _anchors(self, ctx: TaskContext, confusions: list[tuple[str, str]], rng: random.Random) -> list[Example]:
        """The description anchors of a round (errwise.anchors): `errors`, both relations of each error case;
        `all`, every seen relation once; `random`, as many as `errors` would give, of seen relations drawn at random.
        A relation without a description has no anchor."""
        rels = _chosen_relations(self.cfg.anchors, ctx, confusions, rng)
        anchors = (anchor_instance(ctx.relation(r)) for r in rels)
        return [ctx.plain(a, kind="anchor", weight=self.cfg.error_weight) for a in anchors if a is not None]

    def _swaps(self, ctx: TaskContext, confusions, by_rel, rng: random.Random) -> list[Example]:
        """The entity-substituted variants of a round (errwise.entity_swap): for each chosen relation (`errors`: both
        relations of each error case, as often as they occur; `all`: every seen relation once; `random`: as many as
        `errors` would give, drawn at random), each of its memory instances twice, once with its head mention replaced
        by the head of an instance of another relation, once with its tail replaced by another's tail."""
        rels = _chosen_relations(self.cfg.entity_swap, ctx, confusions, rng)
        if not rels:
            return []
        pool = sorted((x for xs in by_rel.values() for x in xs), key=lambda x: x.uid)
        others: dict[str, list[RelationInstance]] = {}  # per relation, the instances whose mentions it may take
        out = []
        for rel in rels:  # `errors` names a relation once per error case: its pool is built once
            if rel not in ctx.memory:
                continue
            if rel not in others:
                others[rel] = [y for y in pool if y.relation != rel]
            mem = by_rel.get(rel, []) if others[rel] else []  # the probe left out
            for x in (x for x in mem if x.head[1] <= x.tail[0] or x.tail[1] <= x.head[0]):  # spans apart
                for role in ("head", "tail"):
                    v = with_mention(x, role, getattr(rng.choice(others[rel]), role + "_text").split())
                    out.append(ctx.plain(v, kind="swap", weight=self.cfg.error_weight))
        return out

    def _distilled(self, ex: Example, targets: dict | None) -> Example:
        if not targets or ex.uid not in targets:
            return ex
        c = self.cfg
        return dataclasses.replace(
            ex, distill=targets[ex.uid], distill_weight=c.distill_weight, distill_temperature=c.distill_temperature
        )

    def _error_focused(self, ctx: TaskContext, x: RelationInstance, pred: str, kind: str, by_rel, rng) -> list[Example]:
        """The error-focused examples of error case `x` answered `pred`: extra plain copies, the confronting
        instruction, the contrastive one beside instances of `pred` (and its mirror), and the ranking mirror (an
        instance of `pred` in the plain instruction ranked above x's gold)."""
        c = self.cfg
        gold, wrong = ctx.relation(x.relation), ctx.relation(pred)
        out = [ctx.plain(x, kind=kind, weight=c.error_weight) for _ in range(c.error_repeats - 1)]
        if c.confront_error:
            out.append(confront_example(x, gold, wrong, weight=c.error_weight))
        if c.contrastive:
            pool = [s for s in by_rel.get(pred, []) if s.uid != x.uid]
            example, shots, options = self._contrastive(ctx, x, pred, pool, rng)
            out.append(example)
            if c.contrastive_symmetric and pool:
                # The mirror: an instance of the confused relation beside the error case, answered with its own.
                mirror = rng.choice([s for s in pool if s not in shots] or pool)
                out.append(
                    dataclasses.replace(
                        contrastive_example(mirror, wrong, gold, [x], options, weight=c.error_weight),
                        kind="contrastive-mirror",
                    )
                )
        if c.mirror_rank > 0:
            # The ranking mirror: training x towards its gold pushes the confused relation down wherever the two are
            # alike; an instance of the confused relation, ranked above the gold in the tested format, holds it up.
            pool = [s for s in by_rel.get(pred, []) if s.uid != x.uid]
            if pool:
                y = rng.choice(pool)
                mirror = ctx.plain(y, kind="mirror-rank", weight=c.error_weight)
                out.append(dataclasses.replace(mirror, rejected=gold.name, rank_weight=c.mirror_rank))
        return out

    def _contrastive(self, ctx: TaskContext, x: RelationInstance, pred: str, pool, rng: random.Random):
        """(x beside instances of `pred` from `pool` in the contrastive instruction, the shots, the options)."""
        c = self.cfg
        gold, wrong = ctx.relation(x.relation), ctx.relation(pred)
        shots = rng.sample(pool, min(c.contrastive_shots, len(pool))) if c.contrastive_with_memory else []
        others = [r for r in ctx.seen if r.id not in (gold.id, wrong.id)]
        options = [gold, wrong, *rng.sample(others, min(2, len(others)))]
        rng.shuffle(options)
        return contrastive_example(x, gold, wrong, shots, options, weight=c.error_weight), shots, options

    def _recorded(self, ctx: TaskContext, by_rel, rng: random.Random) -> list[Example]:
        """The confusion record's examples of a consolidation round (errwise.pair_record): for each chosen pair
        {r, r'}, a memory instance of r in the contrastive instruction beside r''s memory, and one of r' beside r's."""
        out = []
        for a, b in self.recorded_pairs(ctx, by_rel, rng):
            for rel, other in ((a, b), (b, a)):
                ex, _, _ = self._contrastive(ctx, rng.choice(by_rel[rel]), other, by_rel[other], rng)
                out.append(dataclasses.replace(ex, kind="record"))
        return out

    def recorded_pairs(self, ctx: TaskContext, by_rel, rng: random.Random) -> list[tuple[str, str]]:
        """The pairs a consolidation round trains (errwise.pair_record): `rivals`, the pair_record_top pairs of the
        rival record of the earlier tasks with the most summed rival probability (ties by relation ids) whose
        relations both have replayable instances; `random`, as many pairs of such relations drawn at random."""
        mode = self.cfg.pair_record
        if mode == "off":
            return []
        ok = sorted(r for r, xs in by_rel.items() if xs and r in ctx.memory)
        record = rival_record(ctx.run_dir / "error_cases", ctx.task.index - 1)
        ranked = sorted((p for p in record if p[0] in ok and p[1] in ok), key=lambda p: (-record[p], p))
        pairs = ranked[: self.cfg.pair_record_top]
        if mode == "random":
            every = [(a, b) for i, a in enumerate(ok) for b in ok[i + 1 :]]
            pairs = rng.sample(every, min(len(pairs), len(every)))
        return pairs

    def end_task(self, ctx: TaskContext) -> None:
        """Record which initial errors the trained model now gets right (fixed) and which correct ones broke; with
        errwise.pair_record, the memory's rivals for the later tasks' consolidation rounds."""
        later = ctx.task.index < len(ctx.stream.tasks) - 1
        if self.cfg.pair_record != "off" and ctx.cfg.train.consolidate > 0 and later:
            self._record_rivals(ctx)
        if not self.cases:
            return
        xs = [x for x, _, _ in self.cases]
        after = ctx.predict(xs, desc=f"T{ctx.task.index + 1} after")
        summary: dict[str, dict[str, int]] = {"train": {}, "memory": {}}
        for (x, source, before), now in zip(self.cases, after):
            s = summary.setdefault(source, {})  # "probe" too, with probe_per_relation
            was, ok = before == x.relation, now == x.relation
            key = "initial_errors" if not was else "initial_correct"
            s[key] = s.get(key, 0) + 1
            if not was and ok:
                s["fixed"] = s.get("fixed", 0) + 1
            if was and not ok:
                s["new_errors"] = s.get("new_errors", 0) + 1
        path = ctx.run_dir / "error_cases" / f"task_{ctx.task.index:02d}_summary.json"
        path.write_text(json.dumps(summary, indent=1))

    def hints(self, instances) -> None:
        return None


def error_case_rows(cases) -> str:
    """The JSONL text of error_cases/task_XX*.jsonl: one row per (instance, source, predicted relation id)."""
    rows = [{"uid": x.uid, "source": s, "gold": x.relation, "pred": p, "correct": p == x.relation} for x, s, p in cases]
    return "".join(json.dumps(r) + "\n" for r in rows)


def _write_rows(ctx: TaskContext, name: str, text: str) -> None:
    """error_cases/<name> of the run folder (JSONL text)."""
    (ctx.run_dir / "error_cases").mkdir(exist_ok=True)
    (ctx.run_dir / "error_cases" / name).write_text(text)


def rival_record(folder, upto: int) -> dict[tuple[str, str], float]:
    """The confusion record of errwise.pair_record: per pair of relations {r, r'} (a sorted tuple), the summed
    probability of r' on r's memory instances where r' was the rival (and of r on r''s), at the ends of tasks
    0..upto (error_cases/task_XX_rivals.jsonl)."""
    record: dict[tuple[str, str], float] = {}
    for i in range(upto + 1):
        path = folder / f"task_{i:02d}_rivals.jsonl"
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            row = json.loads(line)
            pair = tuple(sorted((row["gold"], row["rival"])))
            record[pair] = record.get(pair, 0.0) + row["p_rival"]
    return record


def _chosen_relations(mode: str, ctx: TaskContext, confusions: list[tuple[str, str]], rng: random.Random) -> list[str]:
    """The relations an anchors / entity_swap mode picks in a round: `errors`, both relations of each error case (as
    often as they occur); `all`, every seen relation once; `random`, as many as `errors` would, drawn at random;
    `off`, none."""
    if mode == "errors":
        return [r for pair in confusions for r in pair]
    if mode == "all":
        return [r.id for r in ctx.seen]
    if mode == "random":
        return [rng.choice(ctx.seen).id for _ in range(2 * len(confusions))]
    return []


def _random_partner(ctx: TaskContext, x: RelationInstance) -> str:
    """The control of errwise.contrast_with `random`: a seen relation other than x's gold in place of the one the
    model answered (one exists: answers are among the seen relations), drawn by a generator of its own (seeded by
    the run, the task and the instance), so the round's other draws are those it would make anyway."""
    others = sorted(r.id for r in ctx.seen if r.id != x.relation)
    return random.Random(f"{ctx.cfg.train.seed}:{ctx.task.index}:{x.uid}").choice(others)


def with_mention(x: RelationInstance, role: str, mention: list[str]) -> RelationInstance:
    """x with its `role` (head or tail) mention replaced by the tokens `mention`, the other span moved to match;
    the uid marks the variant (`<uid>/swap-<role>:<mention>`)."""
    span, other = (x.head, x.tail) if role == "head" else (x.tail, x.head)
    tokens = (*x.tokens[: span[0]], *mention, *x.tokens[span[1] :])
    shift = len(mention) - (span[1] - span[0])
    new = (span[0], span[0] + len(mention))
    moved = (other[0] + shift, other[1] + shift) if other[0] >= span[1] else other
    head, tail = (new, moved) if role == "head" else (moved, new)
    return RelationInstance(f"{x.uid}/swap-{role}:{' '.join(mention)}", tokens, head, tail, x.relation)


def _draw(rel: str, xs: list[RelationInstance], k: int, seed: int) -> list[RelationInstance]:
    """k of a relation's instances (fewer than all), seeded by the relation: the same whatever the order of xs."""
    xs = sorted(xs, key=lambda x: x.uid)
    return random.Random(f"{seed}:{rel}").sample(xs, min(k, len(xs) - 1))
