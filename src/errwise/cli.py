"""`errwise run | report | compare | rescore | methods`. Options of `run` are generated from the config dataclasses.

Every user error is one line on stderr (`error: ...`) and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
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
        description="Run a continual relation extraction stream. CONFIG is a YAML preset (configs/*.yaml) or "
        "an interrupted run folder to resume. Any field can be overridden: --train.lr 1e-4. Each section is a "
        "config dataclass (errwise/config.py); a method's own options have their own section.",
    )
    p.add_argument("config", nargs="?", help="YAML preset, or a run folder to resume (default: built-in demo)")
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
    from errwise.config import from_dict, load_yaml, parse_value, set_dotted
    from errwise.run import completed_tasks, run

    overrides = {k: v for k, v in vars(args).items() if "." in k or k in ("output_dir", "report_to")}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.config and Path(args.config).is_dir():
        run_dir = Path(args.config)
        if not completed_tasks(run_dir) and not (run_dir / "config.yaml").exists():
            raise ErrwiseError(f"{run_dir} is not a run folder (no config.yaml); pass a YAML config to start a run")
        if overrides:
            raise ErrwiseError(f"cannot change options when resuming {run_dir}; start a new run instead")
        from errwise.run import resume_config

        run(resume_config(run_dir), run_dir)
        return
    d = load_yaml(args.config) if args.config else {}
    for k, v in overrides.items():
        set_dotted(d, k, parse_value(k, v))
    from_cli = args.config and any(k != "output_dir" for k in overrides)
    run(from_dict(d, source=f"{args.config} + command line" if from_cli else args.config or "command line"))


def cmd_report(args: argparse.Namespace) -> None:
    from errwise.report import write_report

    out = Path(args.out) if args.out else Path(args.runs[0]) / "report" if len(args.runs) == 1 else Path("report")
    path = write_report([Path(r) for r in args.runs], out, ignore=args.ignore)
    print(f"wrote {path}")
    print(path.read_text().split("\n## ")[0] if args.quiet else path.read_text())


def cmd_compare(args: argparse.Namespace) -> None:
    from errwise.report import compare_table

    print(compare_table([Path(r) for r in args.runs], baseline=args.baseline, ignore=args.ignore, plot=args.plot))
    if args.plot:
        print(f"wrote {args.plot}")


def cmd_rescore(args: argparse.Namespace) -> None:
    from errwise.rescore import rescore

    split = "val" if args.max_val is not None and args.max_test is None else "test"
    split = args.split or split
    tag = f"{split}{args.max_val if split == 'val' else args.max_test or 'all'}"
    tag += f"-{args.search}" if args.search else ""
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
        )


def cmd_methods(args: argparse.Namespace) -> None:
    from errwise.methods import METHODS

    for name, _factory in METHODS.items():
        print(name)


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
    cp.add_argument("--baseline", default="replay")
    cp.add_argument("--plot", metavar="FILE", help="also write the seen accuracy per task, methods side by side (PNG)")
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
    sp.add_argument("--out", help="parent folder of the rescored runs (default: beside each run, RUN-test<N>)")
    sub.add_parser("methods", help="list the registered continual methods")
    args = parser.parse_args(argv)
    previous = _sigterm_as_interrupt()
    try:
        {"run": cmd_run, "report": cmd_report, "compare": cmd_compare, "rescore": cmd_rescore, "methods": cmd_methods}[
            args.command
        ](args)
    except ErrwiseError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only folder: what marks progress is written atomically, nothing is lost
        from errwise.errors import os_error

        resume = "; completed tasks are kept: rerun the command to resume" if args.command == "run" else ""
        print(f"error: {os_error(e)}{resume}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: completed tasks are saved; rerun `errwise run RUN_DIR` to resume", file=sys.stderr)
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
