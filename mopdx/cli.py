"""Command line: ``python -m mopdx {fit,eval,verify,compare,config,list-strategies,...} ...``, plus plug-ins' commands (the lab's ``lab``).

Every subcommand takes ``--config FILE`` (repeatable) and trailing
``key=value`` overrides in OmegaConf dot notation, merged in the order
documented in ``mopdx.config``; ``config show`` prints the result, every key
with its value.  User mistakes print one ``error:`` line and exit with status
2; Ctrl-C prints one ``error: interrupted ...`` line (with the ``--resume``
command when a run folder holds a checkpoint) and exits with 130.  A run folder
the failed run left with nothing but its config is removed; one holding a
checkpoint or an eval record is kept.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import sys
import warnings
from pathlib import Path

from mopdx.errors import MopdxError
from mopdx.paths import scenario_names  # compare's presets: configs/experiment/scenarios/*.yaml (no torch import)

OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")  # a key=value override, not a method (methods carry theirs in [...])
EPILOG = "overrides: trailing key=value pairs, e.g. train.max_steps=100 optim.lr=5e-4 data.domain_ratios.math=0.5"


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML config merged after base and strategy configs (repeatable)")
    p.add_argument("--strategy", default=None, help="strategy name (see list-strategies) or module:Class; default: from config, else mopd")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mopdx", description="Multi-teacher on-policy distillation.", epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("fit", help="train a student by on-policy distillation", epilog=EPILOG)
    _common(p)
    p.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR", help="continue a stopped run from its last checkpoint with its saved config (the latest RUN_DIR/resume-*.yaml, else config.yaml); "
                   "overrides given here are recorded in a new resume-<time>.yaml, config.yaml is kept")

    p = sub.add_parser("eval", help="score a model folder on domain prompts with the verifiers (avg@eval.samples at eval.temperature; eval.greedy=true for greedy)", epilog=EPILOG)
    _common(p)
    p.add_argument("--model", required=True, help="model folder to evaluate (or lab:<artifact>)")
    p.add_argument("--student", default=None, help="starting-student folder for the normalised score (default: model.student)")
    p.add_argument("--teacher", action="append", default=[], metavar="DOMAIN=DIR", help="teacher per domain for the normalised score (default: model.teachers)")
    p.add_argument("--prompts", default=None, help="eval prompts with answers: a .jsonl / .parquet file or datasets folder, read like data.eval (default: data.eval)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")

    from mopdx.verifiers.cli import add_parser as add_verify

    add_verify(sub)

    p = sub.add_parser("compare", help="run several strategies with the same seeds and budget; table + plot", epilog=EPILOG)
    p.add_argument("--strategies", nargs="+", default=None,
                   help="methods: strategy names (or module:Class), mix_rl, cascade_rl, baseline:<mixed_sft|offpolicy_sft|merge_avg|merge_task[:scale]>, "
                        "single_teacher:<domain>; any with overrides of its own: camopd[strategy.rho=0.25,strategy.n_g=7]")
    p.add_argument("--scenario", choices=scenario_names(), default=None,
                   help="a preset: the methods and configs of configs/experiment/scenarios/<name>.yaml (each file says what it compares)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="seeds; each strategy runs once per seed (default 5: mean and 95%% CI)")
    p.add_argument("--out", type=Path, default=None, help="comparison folder (default runs/compare-<time>); rerun to resume")
    p.add_argument("--groups", nargs=2, default=None, metavar="NAME=D1,D2", help="two domain groups for a trade-off plot, e.g. general=math,qa domain=code")
    p.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML config for every run (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("config", help="print the resolved config (show: as YAML; keys: every key with its value and allowed values)", epilog=EPILOG)
    p.add_argument("action", choices=["show", "keys"], help="show: the config that fit would run with these flags and overrides, as YAML; "
                   "keys: every key, its value and its allowed values, one line each")
    _common(p)

    sub.add_parser("list-strategies", help="list registered strategies")
    p = sub.add_parser("sweep", help="run (or continue) an Optuna study over config keys from a sweep spec", epilog=EPILOG)
    p.add_argument("spec", type=Path, help="sweep spec YAML, e.g. sweeps/camopd.yaml")
    p.add_argument("--storage", default=None, help="override the spec's storage: sqlite:///f.db, postgresql://..., journal:<file>")
    p.add_argument("--n-trials", type=int, default=None, help="override the spec's n_trials (total over all workers)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p = sub.add_parser("sweep-report", help="best trials, parameter importances and plots of a sweep's study")
    p.add_argument("spec", type=Path, help="the sweep spec the study was run from")
    p.add_argument("--storage", default=None)
    p.add_argument("--quiet", action="store_true")
    p = sub.add_parser("analyze", help="analyses of a run: gradient coherence")
    p.add_argument("analysis", choices=["coherence"])
    p.add_argument("--run", type=Path, required=True, help="run folder (fit with train.keep_checkpoints=true for a curve over training)")
    p.add_argument("--prompts", type=int, default=16, help="prompts per group (eval.groups, else per domain)")
    p.add_argument("--layers", type=int, default=1, help="last N decoder layers (+ LM head) whose gradients are used")
    p.add_argument("--method", choices=["vmap", "loop"], default="vmap")
    p.add_argument("--rho", type=float, default=None, help="kept fraction for the selection gain (default: the run's strategy.rho, else 0.5)")
    p.add_argument("--split-tokens", nargs="+", default=[], metavar="TOKEN",
                   help="also split the two groups' cosine into these completion tokens and the rest (e.g. '|' ' ')")
    p.add_argument("--estimator", choices=["sampled", "expected"], default="sampled",
                   help="sampled: the loss as trained, on the sampled tokens; expected (PG runs): each position's exact "
                        "expectation over the next token -- the same expected update without next-token sampling noise")
    p.add_argument("--quiet", action="store_true")
    p = sub.add_parser("serve-teacher", help="serve a teacher with vLLM's OpenAI-compatible server for scoring (model.teachers.<d>=http://host:port)")
    p.add_argument("--model", required=True, help="teacher model folder (or lab:<artifact>)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-logprobs", type=int, default=None, help="largest top-k served (default: max(20, loss.topk))")
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs this teacher is split over")
    p.add_argument("--gpu-memory-utilization", type=float, default=None, help="share of the card (on CPU: of the RAM) vLLM reserves")
    p.add_argument("--vllm-args", default="", help="more arguments for vLLM's server, as one string")
    p.add_argument("--quiet", action="store_true")
    _plugin_commands(sub)
    return parser


def _plugin_commands(sub: argparse._SubParsersAction) -> None:
    """The subcommands installed plug-ins add (the lab's ``lab build|info``), after the built-in ones."""
    from mopdx.plugins import commands

    for name, cmd in commands().items():
        if name in COMMANDS:
            raise MopdxError(f"an installed plug-in adds the command {name!r}, which mopdx has already; uninstall the plug-in or rename its command")
        p = sub.add_parser(name, help=cmd.help, epilog=EPILOG)
        cmd.add_arguments(p)
        _common(p)
        p.set_defaults(plugin_command=cmd)


def _setup_logging(quiet: bool) -> None:
    if quiet:  # before anything imports tqdm: it reads TQDM_* defaults once, at import
        os.environ["TQDM_DISABLE"] = "1"
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    else:  # read when transformers is first imported; importing it here would cost seconds before the config is checked
        os.environ["TRANSFORMERS_VERBOSITY"] = "error"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def _load(args: argparse.Namespace) -> object:
    from mopdx.config import load_config

    return load_config(args.strategy, args.config, args.overrides)


def cmd_fit(args: argparse.Namespace) -> int:
    if args.resume is not None:
        if not (args.resume / "config.yaml").is_file():
            raise MopdxError(f"cannot resume {args.resume}: no config.yaml there (is it a run folder?)")
        from mopdx.run.folder import lock_run_dir, saved_config
        from mopdx.run.ranks import is_helper

        # the latest resume's config (else config.yaml): a resume continues as the last one ran
        args.config = [str(saved_config(args.resume)), *args.config]
    cfg = _load(args)  # before importing the trainer (seconds): a bad value fails fast
    if args.resume is not None and not is_helper(cfg):  # the other processes of a multi-process run share the main one's folder
        lock_run_dir(args.resume)  # before any model loads: a folder another process trains in fails at once
    from mopdx.run.fit import fit

    summary = fit(cfg, resume=args.resume, progress=not args.quiet)
    if "table" in summary:  # the main process reports; the others of a multi-process run stay quiet
        print(f"\nrun folder: {summary['run_dir']}  (steps: {summary['steps']})\n")
        print(summary["table"])
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from mopdx.data import take_per_domain
    from mopdx.plugins import is_remote, resolve_ref
    from mopdx.run.assembly import install_run_format, read_examples
    from mopdx.run.evaluation import evaluate_folder
    from mopdx.scores import normalised_scores
    from mopdx.tables import domain_table
    from mopdx.teacher_config import panel_of

    cfg = _load(args)
    progress = not args.quiet
    install_run_format(cfg)  # the config's verifiers and chat format grade this eval as they grade a run
    prompts = take_per_domain(read_examples(cfg, "data.eval", progress, args.prompts), cfg.data.eval_per_domain)
    settings = cfg.eval
    domains = sorted({e.domain for e in prompts})
    teachers = dict(cfg.model.teachers)
    for item in args.teacher:
        if "=" not in item:
            raise MopdxError(f"--teacher {item!r} must be DOMAIN=DIR")
        d, path = item.split("=", 1)
        teachers[d] = path
    columns: dict[str, dict[str, float]] = {}
    # one decoding (cfg.eval: avg@k sampling by default, eval.greedy=true for greedy) for every model scored
    model_acc = evaluate_folder(resolve_ref(args.model, cfg, progress), prompts, settings, cfg.model.dtype)
    columns["model"] = model_acc
    student_ref = args.student or cfg.model.student
    columns["student"] = evaluate_folder(resolve_ref(student_ref, cfg, progress), prompts, settings, cfg.model.dtype)
    teacher_acc = {}
    for d in domains:
        panel = panel_of(teachers.get(d)) or ({"": teachers[d]} if d in teachers else {})  # a panel's bar: its best teacher
        accs = [evaluate_folder(resolve_ref(str(ref), cfg, progress), [e for e in prompts if e.domain == d], settings, cfg.model.dtype)[d]
                for ref in panel.values() if not is_remote(str(ref))]
        if accs:
            teacher_acc[d] = max(accs)
    columns["teacher"] = teacher_acc
    columns["normalised"] = normalised_scores(model_acc, columns["student"], teacher_acc)
    print(domain_table(columns, domains))
    if args.out:
        args.out.write_text(json.dumps(columns, indent=2))
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from mopdx.config import to_yaml
    from mopdx.rules import config_rows

    cfg = _load(args)
    if args.action == "show":
        print(to_yaml(cfg), end="")  # type: ignore[arg-type]
        return 0
    rows = list(config_rows(cfg))  # type: ignore[arg-type]
    width = max(len(k) for k, _, _ in rows)
    for key, value, allowed in rows:
        print(f"{key:{width}s}  {value}" + (f"  ({allowed})" if allowed else ""))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from mopdx.strategy import available_strategies, get_strategy_class

    for name, target in sorted(available_strategies().items()):
        doc = (get_strategy_class(name).__doc__ or "").strip().splitlines()
        print(f"{name:12s} {target:32s} {doc[0] if doc else ''}")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from mopdx.experiments.run_coherence import write_analysis

    result = write_analysis(args.run, n_per_group=args.prompts, last_layers=args.layers, method=args.method, rho=args.rho, split_tokens=args.split_tokens,
                            estimator=args.estimator)
    for c in result["checkpoints"]:
        align = f"  cos({', '.join(c['alignment']['groups'])}) {c['alignment']['cos']:+.3f}" if "alignment" in c else ""
        if "alignment_by_tokens" in c:
            t = c["alignment_by_tokens"]
            align += f"  [on {' '.join(map(repr, t['tokens']))}: {t['split']['cos']:+.3f}; rest: {t['rest']['cos']:+.3f}]"
        align += "  effective rollouts " + ", ".join(f"{k} {v['effective_n']:.1f}/{v['n']}" for k, v in c["concentration_by_group"].items())
        print(f"step {c['step']:>5}: coherence {c['coherence_all']:.3f}  selected {c['selected_coherence']:.3f} (gain {c['selection_gain']:.2f}){align}")
    print(f"wrote {result['out']}/coherence.json and coherence.png")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from mopdx.experiments.sweep import load_spec, run_sweep
    from mopdx.experiments.sweep_report import best_table

    if args.overrides:
        raise MopdxError(f"sweep takes no key=value overrides ({' '.join(args.overrides)}): put them under 'overrides' in the spec")
    spec = load_spec(args.spec, args.storage)
    study = run_sweep(spec, args.n_trials, progress=not args.quiet)
    print(f"\nstudy {spec.name!r} in {spec.storage_url} ({len(study.trials)} trials; run folders in {spec.folder / 'runs'})\n")
    print(best_table(study, spec))
    print(f"\nreport: python -m mopdx sweep-report {args.spec}")
    return 0


def cmd_sweep_report(args: argparse.Namespace) -> int:
    from mopdx.experiments.sweep import load_spec
    from mopdx.experiments.sweep_report import sweep_report

    result = sweep_report(load_spec(args.spec, args.storage))
    print(result["table"])
    print(f"report folder: {result['out']} ({', '.join(result['plots'])})")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from mopdx.experiments.compare import run_comparison

    groups = None
    if args.groups:
        if not all("=" in g for g in args.groups):
            raise MopdxError("--groups takes two NAME=D1,D2 items, e.g. general=math,qa domain=code")
        groups = {g.split("=", 1)[0]: g.split("=", 1)[1].split(",") for g in args.groups}
    from mopdx.experiments.methods import check_methods, scenario_configs, scenario_methods

    configs = [*scenario_configs(args.scenario), *args.config] if args.scenario else list(args.config)
    # "--strategies a b key=value": argparse hands trailing overrides to --strategies; the help says they are overrides.
    if args.strategies:
        trailing = [m for m in args.strategies if OVERRIDE.match(m)]
        args.strategies = [m for m in args.strategies if not OVERRIDE.match(m)]
        args.overrides = [*args.overrides, *trailing]
    methods = args.strategies or (scenario_methods(args.scenario, configs, args.overrides) if args.scenario else None)
    if not methods:
        raise MopdxError("give --strategies (e.g. mopd camopd) or --scenario mopd")
    check_methods(methods, configs, args.overrides)
    result = run_comparison(methods, args.seeds, configs, args.overrides, args.out, progress=not args.quiet, groups=groups)
    print(f"\ncomparison folder: {result['out_dir']}  (comparison.md/.csv/.json, comparison.png, comparison_scores.png)\n")
    print(result["table"])
    print()
    print(result["paper_table"])
    return 0


def cmd_serve_teacher(args: argparse.Namespace) -> int:
    """Replace this process with vLLM's API server for the teacher (after printing the URL to pass)."""
    import shlex

    import torch

    from mopdx.backends.remote import vllm_server_command
    from mopdx.config import load_config
    from mopdx.plugins import resolve_ref

    cfg = load_config(None, [], args.overrides)
    model = resolve_ref(args.model, cfg)
    if not Path(model).is_dir():
        raise MopdxError(f"teacher folder {model} does not exist")
    import socket

    with socket.socket() as probe:  # vLLM would fail on a busy port only after loading the model
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: a port in TIME_WAIT is free
        try:
            probe.bind((args.host, args.port))
        except OSError:
            raise MopdxError(f"port {args.port} is in use on {args.host}: pick another --port") from None
    extra = ["--tensor-parallel-size", str(args.tensor_parallel_size), *shlex.split(args.vllm_args)]
    share = args.gpu_memory_utilization if args.gpu_memory_utilization is not None else (None if torch.cuda.is_available() else 0.1)
    if share is not None:
        extra += ["--gpu-memory-utilization", str(share)]
    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    cmd = vllm_server_command(model, args.host, args.port, cfg.model.dtype, args.max_logprobs or max(20, int(cfg.loss.topk)), extra)
    host = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
    print(f"serving teacher {args.model} with vLLM: pass model.teachers.<domain>=http://{host}:{args.port} (ready when /health answers; Ctrl-C stops)", flush=True)
    os.execv(sys.executable, cmd)
    return 0  # not reached


def cmd_verify(args: argparse.Namespace) -> int:
    from mopdx.verifiers.cli import cmd_verify as run

    return run(args)


COMMANDS = {"verify": cmd_verify, "analyze": cmd_analyze, "sweep": cmd_sweep, "sweep-report": cmd_sweep_report, "serve-teacher": cmd_serve_teacher, "compare": cmd_compare, "fit": cmd_fit, "eval": cmd_eval,
            "config": cmd_config, "list-strategies": cmd_list}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    bad = [a for a in extra if a.startswith("-") or "=" not in a]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)} (config overrides look like key=value)")
    args.overrides = extra
    _setup_logging(getattr(args, "quiet", False))
    interrupted = False

    def on_sigint(signum: int, frame: object) -> None:
        nonlocal interrupted
        interrupted = True
        raise KeyboardInterrupt

    # Lightning catches Ctrl-C itself and calls sys.exit(1): the flag tells that exit from others.
    previous = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
    before = _opened_run_dirs()  # a caller's own runs (main called in-process) are not this command's
    try:
        with _logs_above_bars():
            if args.command in COMMANDS:
                return COMMANDS[args.command](args)
            return int(args.plugin_command.run(args, _load(args)))
    except MopdxError as exc:
        _close_run_dirs(before)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _interrupted(before)
    except SystemExit:
        if not interrupted:
            raise
        return _interrupted(before)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _logs_above_bars() -> contextlib.AbstractContextManager[None]:
    """Console log lines written through ``tqdm.write``: an eval line mid-run prints above the
    progress bar instead of being glued to its end. Only where the root logger has a console
    handler (``_setup_logging``'s); a caller that set up its own logging keeps it as it is."""
    console = [h for h in logging.root.handlers if type(h) is logging.StreamHandler and h.stream in (sys.stdout, sys.stderr)]
    if not console:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm  # after _setup_logging: tqdm reads TQDM_* at import

    return logging_redirect_tqdm()


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _opened_run_dirs() -> list[Path]:
    if "mopdx.run.folder" not in sys.modules:  # no run folder was opened
        return []
    from mopdx.run.folder import opened_run_dirs

    return opened_run_dirs()


def _close_run_dirs(skip: list[Path]) -> list[Path]:
    """Unlock the command's run folders, removing those the run left empty; the ones kept."""
    if "mopdx.run.folder" not in sys.modules:
        return []
    from mopdx.run.folder import close_run_dirs

    return close_run_dirs(skip)


def _interrupted(skip: list[Path]) -> int:
    """One line for Ctrl-C, with the resume command when a run folder has a checkpoint; exit 130."""
    kept = _close_run_dirs(skip)
    if not kept:
        print("error: interrupted", file=sys.stderr)
        return 130
    from mopdx.run.folder import last_step

    step = last_step(kept[-1])
    if step is None:
        print(f"error: interrupted; run folder {kept[-1]} holds no checkpoint to resume from", file=sys.stderr)
    else:
        print(f"error: interrupted at step {step}; resume with python -m mopdx fit --resume {kept[-1]}", file=sys.stderr)
    return 130


if __name__ == "__main__":
    sys.exit(main())
