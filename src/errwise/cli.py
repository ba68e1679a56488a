"""`errwise run | report | compare | rescore | methods`. Options of `run` are generated from the config dataclasses.

Every user error is one line on stderr (`error: ...`) and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from errwise.errors import ErrwiseError


def _run_parser(sub: argparse._SubParsersAction) -> None:
    import dataclasses

    from errwise.config import _SECTION_TYPES, ERRWISE_KEYS, field_types

    p = sub.add_parser(
        "run",
        help="run a continual stream (or resume an interrupted run folder)",
        description="Run a continual relation extraction stream. CONFIG is a YAML preset (configs/*.yaml; several "
        "are merged left to right) or an interrupted run folder to resume. Any field can be overridden: "
        "--train.lr 1e-4. Each section is a config dataclass (errwise/config.py); a method's own options have "
        "their own section.",
    )
    p.add_argument(
        "config",
        nargs="*",
        help="YAML preset(s), merged left to right (a later file's keys win, section by section: "
        "configs/cpu_forget.yaml configs/errwise_paper.yaml), or one run folder to resume (default: built-in demo)",
    )
    groups = {}
    for section, cls in _SECTION_TYPES.items():
        doc = (cls.__doc__ or "").strip()
        groups[section] = p.add_argument_group(f"{section}.*", doc if not doc.startswith(cls.__name__) else None)
    for key, (_hint, f) in field_types().items():
        help_text = f.metadata.get("help", "")
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        section = key.split(".")[0]
        target = groups.get(section, p)
        target.add_argument(f"--{key}", metavar="V", help=f"{help_text} [{default}]", dest=key)
    for name in sorted(ERRWISE_KEYS):  # moved to errwise.*: a one-line error saying where (config.parse_value)
        p.add_argument(f"--method.{name}", help=argparse.SUPPRESS, dest=f"method.{name}")


def cmd_run(args: argparse.Namespace) -> None:
    from errwise.config import TOP_LEVEL, from_dict, load_yaml, merge_sections, parse_value, set_dotted
    from errwise.run import completed_tasks, run

    overrides = {k: v for k, v in vars(args).items() if "." in k or k in TOP_LEVEL}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    paths = args.config
    if any(Path(c).is_dir() for c in paths):
        if len(paths) > 1:
            raise ErrwiseError(f"pass one run folder to resume, or YAML presets only, not {' '.join(paths)}")
        run_dir = Path(paths[0])
        if not completed_tasks(run_dir) and not (run_dir / "config.yaml").exists():
            raise ErrwiseError(f"{run_dir} is not a run folder (no config.yaml); pass a YAML config to start a run")
        if overrides:
            raise ErrwiseError(f"cannot change options when resuming {run_dir}; start a new run instead")
        from errwise.run import resume_config

        run(resume_config(run_dir), run_dir)
        return
    d: dict = {}
    for path in paths:
        merge_sections(d, load_yaml(path))
    for k, v in overrides.items():
        set_dotted(d, k, parse_value(k, v))
    source = " + ".join(paths) or "command line"
    if paths and any(k != "output_dir" for k in overrides):
        source += " + command line"
    run(from_dict(d, source=source))


def cmd_report(args: argparse.Namespace) -> None:
    from errwise.report import write_report

    out = Path(args.out) if args.out else Path(args.runs[0]) / "report" if len(args.runs) == 1 else Path("report")
    path = write_report([Path(r) for r in args.runs], out, ignore=args.ignore)
    print(f"wrote {path}")
    print(path.read_text().split("\n## ")[0] if args.quiet else path.read_text())


def cmd_compare(args: argparse.Namespace) -> None:
    from errwise.report import compare_table

    runs = [Path(r) for r in args.runs]
    print(compare_table(runs, baseline=args.baseline, ignore=args.ignore, plot=args.plot, names=args.names))
    if args.plot:
        print(f"wrote {args.plot}")


def cmd_rescore(args: argparse.Namespace) -> None:
    from errwise.rescore import rescore

    split = "val" if args.max_val is not None and args.max_test is None else "test"
    split = args.split or split
    tag = f"{split}{args.max_val if split == 'val' else args.max_test or 'all'}"
    tag += f"-{args.search}" if args.search else ""
    tag += f"-{args.calibrate}" if args.calibrate else ""
    for run_dir in args.runs:
        out = Path(args.out) / Path(run_dir).name if args.out else Path(f"{run_dir.rstrip('/')}-{tag}")
        rescore(
            Path(run_dir),
            out,
            split=split,
            max_test=args.max_test,
            max_val=args.max_val,
            data_path=args.data_path,
            search=args.search,
            calibrate=args.calibrate,
        )


def cmd_methods(args: argparse.Namespace) -> None:
    """Each registered method, the first line of its module's docstring, and its default schedule."""
    import importlib

    from errwise.config import METHOD_SCHEDULES
    from errwise.methods import METHODS

    width = max(map(len, METHODS))
    for name in METHODS:
        try:
            doc = (importlib.import_module(f"errwise.methods.{name}").__doc__ or "").strip().splitlines()[0]
        except (ImportError, IndexError):
            doc = ""
        doc = doc.removeprefix(f"{name}: ")
        share = METHOD_SCHEDULES.get(name)
        if share:
            doc += f" Default schedule: the memory in a consolidation round of {share:g} of each task's steps."
        print(f"{name:<{width}}  {doc}".rstrip())


_RUNTIME = ("model.device", "model.dtype")


def _extractor_parsers(sub: argparse._SubParsersAction) -> None:
    """`predict`, `learn`, `export`: use what a run trained (see docs/extractor.md)."""
    from errwise.config import field_types

    p = sub.add_parser(
        "predict",
        help="the relation of new sentences, from a run, extractor or export folder",
        description="Predict the relation of each record of INPUT (errwise JSONL: text + head + tail, or tokens + "
        "spans; no relation needed) among every relation SOURCE has learned. One JSON line per record, in order: "
        '{"relation", "name", "score", "top": [[id, p], ...]}; p is the softmax of the exact label scores over the '
        "learned relations.",
    )
    p.add_argument("source", help="run folder (its last completed task), extractor folder or export folder")
    p.add_argument("input", help="errwise JSONL file, or - for standard input")
    p.add_argument("--top-k", type=int, default=3, help="relations listed in `top` [3]")
    p.add_argument("--min-score", type=float, help='answer "relation": null when the best probability is below P')
    p.add_argument("--out", help="write the answers to this file (atomically) instead of standard output")
    p.add_argument("--batch-size", type=int, help="sentences per batch [the source's eval.batch_size]")
    p.add_argument("--device", help="auto, cpu, cuda, ... [the source's model.device]")
    lp = sub.add_parser(
        "learn",
        help="teach a trained model new relations (or more of learned ones) from your own JSONL",
        description="One more task on SOURCE's model, memory and method, from DATA (errwise JSONL with relation). "
        "Holds out --test-fraction of DATA per relation, reports accuracy on the new relations' held-out part and "
        "on the old relations' test data, and writes --output_dir as an extractor folder. SOURCE is never changed. "
        "Options of `errwise run` (but data.* and the model's) can be overridden: --train.epochs 3.",
    )
    lp.add_argument("source", help="run folder or extractor folder")
    lp.add_argument("data", help="errwise JSONL with a relation per record (new relations: 2 instances or more)")
    lp.add_argument("--output_dir", required=True, help="the new extractor folder (must not exist)")
    lp.add_argument("--method", help="continual method of this step [the source's method.name]")
    lp.add_argument("--test-fraction", type=float, default=0.2, help="held out per relation, seeded [0.2]")
    lp.add_argument("--relations", help="names and descriptions of DATA's relations: {id: {name, description}}")
    for key in field_types():  # not the data, nor the model the adapter belongs to
        if "." in key and not key.startswith("data.") and (not key.startswith("model.") or key in _RUNTIME):
            lp.add_argument(f"--{key}", metavar="V", dest=key, help="as in `errwise run`")
    ep = sub.add_parser(
        "export",
        help="a standard Hugging Face folder (adapter or merged weights) plus relations and prompt template",
    )
    ep.add_argument("source", help="run folder, extractor folder or export folder")
    ep.add_argument("out", help="the export folder (must not exist)")
    ep.add_argument("--merge", action="store_true", help="merge the LoRA adapter into full weights")
    ep.add_argument("--device", help="auto, cpu, cuda, ... (where the merge runs) [the source's model.device]")
    sp = sub.add_parser(
        "serve",
        help="an HTTP API and a review page: predict, collect corrections, learn from them (docs/serve.md)",
        description="Serve SOURCE over HTTP (FastAPI; pip install 'errwise[serve]'): /predict, /corrections, /learn, "
        "/jobs/ID, /rollback, a review page at / and the API docs at /docs. Learning runs beside serving and writes "
        "a new version in the serving folder (--state), served when complete. Options of `errwise run` (but data.* "
        "and the model's) set how learning trains: --train.max_steps 40.",
    )
    sp.add_argument("source", help="run folder, extractor folder or export folder (an export folder cannot learn)")
    sp.add_argument("--host", default="127.0.0.1", help="address to bind [127.0.0.1: this machine only]")
    sp.add_argument("--port", type=int, default=8000, help="[8000]")
    sp.add_argument("--token", help="bearer token of the write endpoints [generated and printed at start]")
    sp.add_argument("--state", help="serving folder: versions, corrections log, jobs [SOURCE.serve beside SOURCE]")
    sp.add_argument("--method", default="errwise", help="continual method learning the corrections [errwise]")
    sp.add_argument("--test-fraction", type=float, default=0.2, help="corrections held out per relation [0.2]")
    sp.add_argument("--max-records", type=int, default=64, help="records per /predict request [64]")
    sp.add_argument("--device", help="auto, cpu, cuda, ... [the source's model.device]")
    for key in field_types():
        if "." in key and not key.startswith(("data.", "model.")) and key != "method.name":  # --method
            sp.add_argument(f"--{key}", metavar="V", dest=key, help="as in `errwise run`")


def _quiet_loading() -> None:
    """No weight-loading bars from transformers: predict's stdout is data, and its stderr kept for errors."""
    from transformers.utils import logging

    logging.disable_progress_bar()


def cmd_predict(args: argparse.Namespace) -> None:
    from errwise.extractor import Extractor, check_source, read_records, write_text

    if args.top_k < 1:
        raise ErrwiseError(f"--top-k must be >= 1, got {args.top_k}")
    if args.min_score is not None and not 0 <= args.min_score <= 1:
        raise ErrwiseError(f"--min-score is a probability in [0, 1], got {args.min_score}")
    if args.batch_size is not None and args.batch_size < 1:
        raise ErrwiseError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.out and not Path(args.out).resolve().parent.is_dir():
        raise ErrwiseError(f"{args.out}: no such folder {Path(args.out).resolve().parent}; create it first")
    check_source(Path(args.source))
    records = read_records(args.input, labelled=False)
    _quiet_loading()
    ext = Extractor.load(args.source, device=args.device)
    rows = ext.predict(records, top_k=args.top_k, min_score=args.min_score, batch_size=args.batch_size)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    if args.out:
        write_text(Path(args.out), text)
    else:
        sys.stdout.write(text)


def cmd_learn(args: argparse.Namespace) -> None:
    from errwise.config import parse_value
    from errwise.data.formats import read_relations
    from errwise.extractor import Extractor, new_relations, read_records, source_relations

    out = Path(args.output_dir)
    if out.exists():
        raise ErrwiseError(f"{out} exists; pass a new --output_dir (SOURCE and earlier extractors are never changed)")
    data = read_records(args.data, labelled=True)
    names = read_relations(Path(args.relations)) if args.relations else None
    new_relations(source_relations(Path(args.source)), data, names or {}, args.data)  # fails before any loading
    overrides = {k: parse_value(k, v) for k, v in vars(args).items() if "." in k and v is not None}
    _quiet_loading()
    try:
        ext = Extractor.load(args.source, device=overrides.get("model.device"), dtype=overrides.get("model.dtype"))
        new = ext.learn(
            data, relations=names, method=args.method, test_fraction=args.test_fraction, overrides=overrides,
            source=args.data,
        )  # fmt: skip
        new.save(out)
    except KeyboardInterrupt:
        print(f"interrupted: nothing written, {args.source} unchanged; rerun the command", file=sys.stderr)
        raise SystemExit(130) from None
    print("\n".join(learn_summary(new.history[-1])))
    print(f"wrote {out}")


def learn_summary(h: dict) -> list[str]:
    """What `errwise learn` prints of a learn step (its history line `h`): what was learned, the accuracies."""
    pct = lambda a: "n/a" if a is None else f"{100 * a:.1f}%"  # noqa: E731
    forgetting = "n/a" if h["forgetting"] is None else f"{100 * h['forgetting']:.1f} points"
    return [
        f"learned {len(h['new_relations'])} new relation(s) {', '.join(h['new_relations']) or '-'}"
        + (f" and more of {', '.join(h['more_of'])}" if h["more_of"] else "")
        + f" with {h['method']}: {h['train_instances']} instances trained on, {h['held_out']} held out, "
        f"{h['train_steps']} steps ({h['seconds']:.0f}s)",
        f"new relations: {pct(h['new_accuracy'])} on {h['new_test']} held-out instances",
        f"old relations: {pct(h['old_accuracy'])} on {h['old_test']} test instances "
        f"(before: {pct(h['old_accuracy_before'])}, forgetting {forgetting})",
    ]


def cmd_serve(args: argparse.Namespace) -> None:
    from errwise.config import parse_value

    if args.max_records < 1:
        raise ErrwiseError(f"--max-records must be >= 1, got {args.max_records}")
    if not 0 <= args.port <= 65535:
        raise ErrwiseError(f"--port must be in 0..65535, got {args.port}")
    if not 0 <= args.test_fraction < 1:
        raise ErrwiseError(f"--test-fraction must be in [0, 1), got {args.test_fraction}")
    overrides = {k: parse_value(k, v) for k, v in vars(args).items() if "." in k and v is not None}
    from errwise.serve import serve

    _quiet_loading()
    serve(
        args.source, host=args.host, port=args.port, token=args.token, state=args.state, device=args.device,
        method=args.method, test_fraction=args.test_fraction, overrides=overrides, max_records=args.max_records,
    )  # fmt: skip


def cmd_export(args: argparse.Namespace) -> None:
    from errwise.extractor import Extractor, check_source

    out = Path(args.out)
    if out.exists():
        raise ErrwiseError(f"{out} exists; pass a new folder")
    check_source(Path(args.source))
    _quiet_loading()
    Extractor.load(args.source, device=args.device).export(out, merge=args.merge)
    print(f"wrote {out}")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line too (the subcommands' parsers are of this class as well)."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see `{self.prog} --help`\n")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="errwise", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _run_parser(sub)
    rp = sub.add_parser("report", help="markdown table and plots from run folders")
    rp.add_argument("runs", nargs="+", help="run folders (several orders of one config are averaged)")
    rp.add_argument("--out", help="output folder (default RUN/report, or ./report for several runs)")
    rp.add_argument("--quiet", action="store_true", help="print only the first section")
    cp = sub.add_parser("compare", help="methods side by side: mean +- std over orders, paired test")
    cp.add_argument("runs", nargs="+")
    cp.add_argument(
        "--baseline",
        help="the group the others are compared with: a label as printed, a method, or the run folders' name without "
        "its -<order> (repdefer for repdefer-0, repdefer-1, ...) [replay, if any]",
    )
    cp.add_argument("--plot", metavar="FILE", help="also write the seen accuracy per task, methods side by side (PNG)")
    cp.add_argument(
        "--names",
        choices=("config", "folders"),
        default="config",
        help="label rows by method and differing config keys, or by the run folders' name without -<order> "
        "(repdefer for repdefer-0, ...) with a legend [config]",
    )
    for p in (rp, cp):
        p.add_argument(
            "--ignore",
            action="append",
            default=[],
            metavar="KEY",
            help="a config key (e.g. data.max_val) whose values do not split runs into groups; repeatable",
        )
    sp = sub.add_parser(
        "rescore",
        help="score a finished run's checkpoints again on more test (or validation) instances",
        description="Score every task checkpoint of finished LoRA runs again, on the first N test (or validation) "
        "instances per seen relation, without retraining; writes RUN-test<N> (or OUT/RUN) as a run folder that "
        "report and compare read. cpu_mini tests on 10 per relation; the split holds 140.",
    )
    sp.add_argument("runs", nargs="+", help="run folders")
    sp.add_argument("--max-test", type=int, help="test instances per relation (default: all of the split)")
    sp.add_argument("--max-val", type=int, help="validation instances per relation (with --split val)")
    sp.add_argument("--split", choices=("test", "val"), help="test (default) or val")
    sp.add_argument("--data-path", help="dataset folder, when it moved since the run")
    sp.add_argument(
        "--search", choices=("exact", "first_token"), help="prediction search (eval.search; default: the run's)"
    )
    sp.add_argument(
        "--calibrate",
        choices=("none", "content_free"),
        help="score calibration (eval.calibrate; default: the run's)",
    )
    sp.add_argument("--out", help="parent folder of the rescored runs (default: beside each run, RUN-test<N>)")
    sub.add_parser("methods", help="list the registered continual methods")
    _extractor_parsers(sub)
    args = parser.parse_args(argv)
    commands = {"run": cmd_run, "report": cmd_report, "compare": cmd_compare, "rescore": cmd_rescore}
    commands |= {"methods": cmd_methods, "predict": cmd_predict, "learn": cmd_learn, "export": cmd_export}
    commands["serve"] = cmd_serve
    previous = _sigterm_as_interrupt()
    try:
        commands[args.command](args)
    except ErrwiseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only folder: what marks progress is written atomically, nothing is lost
        from errwise.errors import os_error

        resume = "; completed tasks are kept: rerun the command to resume" if args.command == "run" else ""
        print(f"error: {os_error(e)}{resume}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.command == "run":
            print("interrupted: completed tasks are saved; rerun `errwise run RUN_DIR` to resume", file=sys.stderr)
        else:
            print("stopped", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _sigterm_as_interrupt():
    """SIGTERM (`kill`, a job scheduler's stop) ends a run as Ctrl-C does; returns the handler it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_interrupt)


if __name__ == "__main__":
    sys.exit(main())
