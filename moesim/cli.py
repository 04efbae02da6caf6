"""`moesim` command line: argparse -> io -> API -> io. Bad input exits 2 with one line on stderr."""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

from moesim.io.results import WriteError
from moesim.io.safe_yaml import yaml_int
from moesim.metrics.errors import ResultError
from moesim.spec.errors import SpecError

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
DEFAULT_MAX_WALL_S = 3600.0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise SpecError("command line", " ".join(sys.argv[1:]), f"valid arguments ({message}); see moesim --help")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="moesim", description="Simulate and plan Mixture-of-Experts training on GPU clusters.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="simulate a scenario and write its outputs (a file with a sweep: section "
                                     "runs as `moesim sweep` does)")
    run.add_argument("scenario", type=Path, help="scenario YAML file")
    run.add_argument("--out", type=Path, help="output directory (default: runs/<scenario name>, or for a sweep "
                                              "file runs/<scenario name>-sweep, as `moesim sweep`)")
    _run_flags(run, "a scenario whose")
    run.add_argument("--jobs", type=yaml_int, help="a sweep file's worker processes (default: the number of CPUs)")
    run.add_argument("--no-files", action="store_true", help="print the summary only; write nothing (a sweep "
                                                             "runs in a temporary directory, removed at the end)")
    _sweep_parser(sub.add_parser("sweep", help="run a scenario file's sweep points in parallel processes; "
                                               "rerunning resumes an interrupted sweep"))
    rep = sub.add_parser("report", help="figures and a markdown table (report.md) from a sweep directory")
    rep.add_argument("sweep_dir", type=Path, metavar="DIR", help="a directory written by `moesim sweep` (or "
                                                                 "`moesim run` on a sweep file)")
    rep.add_argument("--out", type=Path, help="directory for the report (default: DIR)")
    rep.add_argument("--force", action="store_true", help="replace the report files of an earlier report")
    acc = sub.add_parser("accuracy", help="simulate the validation set of published runs and write the "
                                          "accuracy table (docs/accuracy.md)")
    acc.add_argument("directory", type=Path, nargs="?", default=Path("validation"), metavar="DIR",
                     help="folders with published.yaml + scenario.yaml (default: validation)")
    acc.add_argument("--out", type=Path,
                     help="the table to write; its numbers go beside it as .json (default: docs/accuracy.md, with "
                          "--execute docs/accuracy-executed.md)")
    acc.add_argument("--force", action="store_true", help="replace an existing table")
    acc.add_argument("--baseline", type=Path, metavar="JSON",
                     help="an earlier table's numbers (e.g. the committed docs/accuracy.json): each row shows its "
                          "error before beside the error now")
    acc.add_argument("--only", nargs="+", metavar="RUN", help="simulate these runs only (prints, writes nothing)")
    acc.add_argument("--max-micro-batches", type=yaml_int,
                     help="above this many micro-batches per pipeline, extrapolate from two shorter runs "
                          "(default 32: moesim.report.accuracy.DEFAULT_MAX_MICRO_BATCHES)")
    acc.add_argument("--execute", action="store_true",
                     help="instead of the validation set: execute a matrix of small plans on this machine (expert-"
                          "parallel degree x routing imbalance x two shapes) and compare with their simulation on "
                          "--profile (writes docs/accuracy-executed.md)")
    acc.add_argument("--profile", help="with --execute: the profile calibrated on this machine (default: the "
                                       "committed one of this CPU model with as many ranks: cpu-gloo-2c-2r (AMD "
                                       "EPYC) or cpu-gloo-2c-2r-xeon for 2 ranks, cpu-gloo-2c for 4)")
    acc.add_argument("--nproc", type=yaml_int, help="with --execute: gloo ranks (default: the cores, at most 4)")
    acc.add_argument("--steps", type=yaml_int, help="with --execute: measured steps per case (default 3)")
    acc.add_argument("--passes", type=yaml_int,
                     help="with --execute: times each case runs, the matrix in alternating order, to show the "
                          "measurement's repeatability (default 2)")
    acc.add_argument("--base", type=Path,
                     help="with --execute: the plan the matrix scales (default scenarios/quickstart.yaml)")
    pln = sub.add_parser("plan", help="search layouts x dispatcher x placement x capacity for a scenario's cluster, "
                                      "model and batch (its plan: section), rank them under routing conditions")
    pln.add_argument("scenario", type=Path, help="scenario YAML file (its plan: section; defaults without one)")
    pln.add_argument("--out", type=Path, help="output directory (default: runs/<scenario name>-plan)")
    pln.add_argument("--force", action="store_true", help="replace the files of an earlier plan in --out")
    exe = sub.add_parser("execute", help="run a plan (a scenario, e.g. a plan.yaml of `moesim plan`) for real on this "
                                         "machine's ranks, scaled to fit, timed in the simulator's records")
    exe.add_argument("plan_file", type=Path, metavar="PLAN.yaml", help="scenario YAML file to execute")
    exe.add_argument("--steps", type=yaml_int, default=3, help="measured steps after one untimed warm-up (default 3)")
    exe.add_argument("--backend", default="gloo", help="gloo (CPU ranks, default) or nccl (one GPU per rank)")
    exe.add_argument("--nproc", type=yaml_int, help="ranks on this machine (default: 2 with gloo, the GPUs with "
                                                     "nccl; under torchrun its world size)")
    exe.add_argument("--threads", type=yaml_int, default=1, help="CPU threads per gloo rank (default 1, as "
                                                                  "`moesim calibrate` measures them)")
    exe.add_argument("--compare", metavar="PROFILE", help="simulate the same scaled plan on this hardware profile "
                                                          "(name or path) and print predicted vs measured per phase")
    exe.add_argument("--out", type=Path, help="output directory (default: runs/<scenario name>-execute)")
    exe.add_argument("--force", action="store_true", help="replace an earlier run's directory")
    exe.add_argument("--timeout", type=float, default=600.0, help="seconds before the ranks count as hung")
    val = sub.add_parser("validate", help="check scenario files and exit (0 = all valid)")
    val.add_argument("scenarios", type=Path, nargs="+")
    sub.add_parser("list", help="list hardware profiles and model presets")
    dash = sub.add_parser("dashboard", help="serve the what-if dashboard (Streamlit; pip install 'moesim[app]') "
                                            "until Ctrl+C")
    dash.add_argument("--port", type=yaml_int, default=8501, help="TCP port (default 8501)")
    dash.add_argument("--host", default="127.0.0.1", help="address to bind to (default 127.0.0.1: this machine "
                                                          "only; 0.0.0.0 serves every network it is on)")
    dash.add_argument("--max-wall-s", type=float, help="refuse a simulation of one request estimated to run "
                                                       "longer (default: 60)")
    dash.add_argument("--max-memory-GiB", type=float, dest="max_memory_GiB",
                      help="refuse a simulation estimated to need more memory (default: what is available)")
    sch = sub.add_parser("schema", help="print the JSON Schema of scenario or profile YAML files")
    sch.add_argument("kind", choices=("scenario", "profile"))
    sch.add_argument("--out", type=Path, help="write it to this file instead of printing it")
    sch.add_argument("--force", action="store_true", help="replace an existing file")
    cal = sub.add_parser("calibrate", help="measure this machine (or read cluster-kit samples) and write a profile")
    cal.add_argument("--out", type=Path, required=True, help="profile to write, e.g. hw_profiles/NAME.yaml")
    cal.add_argument("--quick", action="store_true", help="few sizes and repeats (about a minute on a CPU)")
    cal.add_argument("--ranks", default="2,4", help="comma-separated rank counts for the collectives (default 2,4)")
    cal.add_argument("--timeout", type=float, default=600.0, help="seconds before a rank counts as hung")
    cal.add_argument("--from-samples", type=Path, help="build the profile from calibrate/run.py's samples directory")
    cal.add_argument("--base", type=Path, help="with --from-samples: a datasheet profile for what was not measured")
    cal.add_argument("--name", help="profile name (default: the file name)")
    cal.add_argument("--force", action="store_true", help="replace an existing profile")
    _trace_parsers(sub.add_parser("trace", help="record, fit or import routing traces")
                   .add_subparsers(dest="trace_command", required=True, parser_class=_Parser))
    meg = sub.add_parser("import", help="a training framework's launch command -> a scenario YAML").add_subparsers(
        dest="import_kind", required=True, parser_class=_Parser).add_parser(
        "megatron", help="a Megatron-LM command line or arguments file (torchrun ... pretrain_gpt.py --flag value "
                         "...) -> SCENARIO.yaml; unread flags are reported on stderr")
    meg.add_argument("args_file", type=Path, metavar="ARGS_FILE")
    meg.add_argument("--out", type=Path, required=True, metavar="SCENARIO.yaml", help="the scenario to write")
    meg.add_argument("--force", action="store_true", help="replace an existing file")
    meg.add_argument("--profile", default="dgx-h100", help="hardware profile name or path (default dgx-h100)")
    meg.add_argument("--nodes", type=yaml_int, help="nodes of the profile (default: the torchrun launcher's "
                                                    "--nnodes x --nproc-per-node in the file)")
    return p


def _run_flags(p, refused: str) -> None:
    """The flags `run` and `sweep` share. `refused`: what the cost limits refuse, e.g. "a sweep whose"."""
    p.add_argument("--force", action="store_true", help="write into a non-empty directory moesim did not create")
    p.add_argument("--steps", type=yaml_int, help="override simulation.steps")  # 10, 0x10, 0o10 as in YAML
    p.add_argument("--seed", type=yaml_int, help="override simulation.seed")
    p.add_argument("--trace", type=Path, help="replay this routing trace instead of the file's routing (.parquet, "
                                              "SmartMoE .npz or log directory); swept routing keys are dropped")
    p.add_argument("--max-wall-s", type=float, default=DEFAULT_MAX_WALL_S,
                   help=f"refuse {refused} estimated wall time exceeds this (default: one hour)")
    p.add_argument("--max-memory-GiB", type=float, dest="max_memory_GiB",
                   help=f"refuse {refused} estimated peak memory exceeds this (default: the memory available "
                        "on this machine)")


def _sweep_parser(sw) -> None:
    sw.add_argument("scenario", type=Path, help="scenario YAML file with a sweep: section")
    sw.add_argument("--jobs", type=yaml_int, help="worker processes (default: the number of CPUs)")
    sw.add_argument("--out", type=Path, help="output directory (default: runs/<scenario name>-sweep)")
    # a plain string checked against moesim.sweep.SweepBackend in _sweep: importing it here would load the
    # simulator for every command
    sw.add_argument("--backend", default="processes",
                    help="processes (default: worker processes on this machine) or ray (tasks on a Ray cluster; "
                         "pip install 'moesim[ray]'); with ray, --jobs caps the points in flight (default: none)")
    sw.add_argument("--address", help="with --backend ray: the cluster, HOST:PORT of its head node, auto or local "
                                      "(default: RAY_ADDRESS, else a cluster on this machine, else a new local Ray)")
    _run_flags(sw, "a sweep (--jobs points at a time) whose")


# `moesim trace record` flag -> RecorderConfig field (the flags mirror the fields)
_RECORD_FLAGS = {"steps": ("steps", int), "layers": ("num_layers", int), "experts": ("num_experts", int),
                 "top-k": ("top_k", int), "hidden": ("hidden_size", int), "heads": ("num_heads", int),
                 "expert-ffn": ("expert_ffn_size", int), "seq-len": ("seq_len", int),
                 "micro-batch-size": ("micro_batch_size", int), "micro-batches": ("num_micro_batches", int),
                 "sources": ("num_sources", int), "record-every": ("record_every", int),
                 "lr": ("learning_rate", float), "aux-loss": ("aux_loss_coef", float), "seed": ("seed", int),
                 "warmup-steps": ("warmup_steps", int), "threads": ("num_threads", int),
                 "device": ("device", str), "text": ("text_source", str), "text-bytes": ("text_budget_bytes", int)}


def _trace_parsers(sub) -> None:
    rec = sub.add_parser("record", help="train a small MoE transformer with torch and record its router")
    rec.add_argument("--out", type=Path, required=True, help="trace file to write (.parquet)")
    rec.add_argument("--force", action="store_true", help="overwrite an existing file")
    for flag, (field, kind) in _RECORD_FLAGS.items():
        rec.add_argument(f"--{flag}", type=kind, help=f"RecorderConfig.{field}")
    fit = sub.add_parser("fit", help="fit Zipf / Dirichlet / log-normal per layer to a trace")
    fit.add_argument("trace", type=Path, help=".parquet, SmartMoE .npz, or a directory of SmartMoE logs")
    fit.add_argument("--top-k", type=int, help="experts per token, when the trace does not say")
    fit.add_argument("--csv", type=Path, help="also write the per-layer, per-family table here")
    fit.add_argument("--force", action="store_true", help="overwrite an existing --csv file")
    imp = sub.add_parser("import", help="convert a SmartMoE .npz or raw-log directory to the moesim format")
    imp.add_argument("source", type=Path)
    imp.add_argument("--out", type=Path, required=True)
    imp.add_argument("--force", action="store_true", help="overwrite an existing file")


def _trace(args) -> int:
    return {"record": _trace_record, "fit": _trace_fit, "import": _trace_import}[args.trace_command](args)


def _refuse_overwrite(path: Path, force: bool, flag: str = "--out") -> None:
    """Before any work: a directory is never replaced by a file; an existing file only with --force."""
    if path.is_dir():
        raise SpecError(flag, str(path), "a file path, not a directory")
    if (path.exists() or path.is_symlink()) and not force:
        raise SpecError(flag, str(path), "a file that does not exist yet, or pass --force to replace it")
    if not path.parent.is_dir():
        raise SpecError(flag, str(path), "a file in an existing directory")


def _trace_record(args) -> int:
    from moesim.io.traces import write_trace  # noqa: PLC0415
    from moesim.calibration.trace_recorder import RecorderConfig, record_trace  # noqa: PLC0415

    _refuse_overwrite(args.out, args.force)
    fields = {field: getattr(args, flag.replace("-", "_")) for flag, (field, _) in _RECORD_FLAGS.items()
              if getattr(args, flag.replace("-", "_")) is not None}
    flag_of = {field: flag for flag, (field, _) in _RECORD_FLAGS.items()}
    try:
        config = RecorderConfig(**fields)
    except SpecError as err:
        raise SpecError(f"--{flag_of.get(err.key, err.key)}", err.value, err.expected) from None
    t0 = time.perf_counter()

    def progress(step: int, loss: float) -> None:
        if step % max(1, config.steps // 10) == 0 or step == config.steps - 1:
            print(f"step {step:5d}/{config.steps}  loss {loss:.3f}  {time.perf_counter() - t0:6.1f} s", flush=True)

    trace = record_trace(config, progress)
    write_trace(args.out, trace)
    print(f"wrote {args.out}: {trace.counts.shape[0]} steps x {trace.num_layers} layers x "
          f"{trace.num_micro_batches} micro-batches x {trace.num_sources} sources x {trace.num_experts} experts "
          f"in {time.perf_counter() - t0:.1f} s")
    return 0


def _trace_fit(args) -> int:
    from moesim.io.results import write_text_atomic  # noqa: PLC0415
    from moesim.io.traces import load_trace  # noqa: PLC0415
    from moesim.routing.fit import fit_trace  # noqa: PLC0415

    if args.csv:
        _refuse_overwrite(args.csv, args.force, "--csv")
    report = fit_trace(load_trace(args.trace), top_k=args.top_k)
    print(report.format())
    if args.csv:
        print(f"wrote {write_text_atomic(args.csv, report.to_table().to_csv(index=False, float_format='%.6g'))}")
    return 0


def _trace_import(args) -> int:
    from moesim.io.traces import load_trace, write_trace  # noqa: PLC0415

    _refuse_overwrite(args.out, args.force)
    trace = load_trace(args.source)
    write_trace(args.out, trace)
    print(f"wrote {args.out}: counts of shape {trace.counts.shape} (step, layer, micro_batch, src_rank, expert)")
    return 0


def _import(args) -> int:
    """`moesim import megatron`: read the flags, report each one not read (one line each), write the scenario."""
    from moesim import __version__  # noqa: PLC0415
    from moesim.export.megatron_flags import flag_line  # noqa: PLC0415
    from moesim.io.megatron_args import import_megatron_args  # noqa: PLC0415
    from moesim.io.results import write_text_atomic  # noqa: PLC0415
    from moesim.io.safe_yaml import dump_yaml  # noqa: PLC0415

    _refuse_overwrite(args.out, args.force)
    result = import_megatron_args(args.args_file, name=args.out.stem or "imported", base_dir=args.out.parent,
                                  profile=args.profile, nodes=args.nodes)
    for line in [*result.warnings, *(f"{flag[:80]}: {flag_line(flag)}" for flag in result.unmapped)]:
        line = " ".join(f"moesim: warning: {args.args_file}: {line}".split())  # one line, whatever the file holds
        print(line if len(line) <= 400 else line[:397] + "...", file=sys.stderr)
    header = (f"# Imported by `moesim import megatron` (moesim {__version__}) from {str(args.args_file)!r}: "
              f"{len(result.flags)} flags, {len(result.unmapped)} not read (reported when imported).\n# routing: a "
              "preset chosen from the load-balancing flags; Megatron-LM's flags do not say how skewed the router "
              "is.\n")
    write_text_atomic(args.out, header + dump_yaml(result.doc))
    sc, lay = result.scenario, result.scenario.layout
    print(f"wrote {args.out}: {sc.model.name} on {lay.world_size} GPUs ({sc.cluster.nodes} x "
          f"{sc.cluster.profile.name}), tp={lay.tp} cp={lay.cp} pp={lay.pp} dp={lay.dp} ep={lay.ep} etp={lay.etp}"
          f"{f' vpp={lay.vpp}' if lay.vpp > 1 else ''}; {len(result.flags) - len(result.unmapped)} of "
          f"{len(result.flags)} flags read")
    return 0


def _terminate(signum: int, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C: a half-written run is removed, the old one kept


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    previous = signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        return _main(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str]) -> int:
    try:
        try:
            args = _parser().parse_args(argv)
        except SpecError as err:  # report the arguments given to main(), not the process's sys.argv
            raise SpecError(err.key, " ".join(argv), err.expected) from None
        with warnings.catch_warnings():  # libraries' warnings are not the user's business; errors are ours
            warnings.simplefilter("ignore")
            return {"run": _run, "validate": _validate, "list": _list, "trace": _trace,
                    "calibrate": _calibrate, "schema": _schema, "sweep": _sweep,
                    "report": _report, "accuracy": _accuracy, "import": _import, "plan": _plan,
                    "execute": _execute, "dashboard": _dashboard}[args.command](args)
    except SpecError as err:
        print(f"moesim: error: {err.one_line()}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (WriteError, ResultError) as err:  # the input was fine; the result could not be written or made
        print(f"moesim: error: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("moesim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `moesim run ... | head`: the reader left; stop quietly
        sys.stdout = open(os.devnull, "w")  # so the interpreter's final flush cannot fail
        return 141


def _calibrate(args) -> int:
    from moesim.calibration.errors import CalibrationError  # noqa: PLC0415
    from moesim.calibration.run import calibrate_local, profile_from_samples  # noqa: PLC0415

    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise SpecError("--timeout", args.timeout, "a finite number of seconds > 0")
    _refuse_overwrite(args.out, args.force)  # before minutes of measurements, not after
    try:
        if args.from_samples is not None:
            profile_from_samples(args.from_samples, args.out, force=args.force, base=args.base, name=args.name)
            return 0
        try:
            ranks = tuple(int(x) for x in args.ranks.split(","))
        except ValueError:
            raise SpecError("--ranks", args.ranks, "comma-separated integers >= 2, e.g. 2,4") from None
        calibrate_local(args.out, quick=args.quick, ranks=ranks, force=args.force, timeout_s=args.timeout,
                        name=args.name)
    except CalibrationError as err:  # a rank died or hung: one line; samples already taken stay on disk
        print(f"moesim: calibration failed: {err}", file=sys.stderr)
        return 1
    return 0


def _run(args) -> int:
    from moesim.io.staged_dir import check_out_dir, default_run_dir  # noqa: PLC0415 - keep `validate` light
    from moesim.sweep import plan_sweep  # noqa: PLC0415

    plan = plan_sweep(args.scenario, args.steps, args.seed, _checked_trace(args.trace))
    if plan.keys:  # one code path for sweeps: parallel, resumable, the same directory as `moesim sweep`
        return _sweep_plan(plan, _as_sweep_args(args))
    scenario = plan.points[0].scenario
    out = args.out or default_run_dir(plan.name)
    _check_cost([scenario], args, write_files=not args.no_files)
    if not args.no_files:
        check_out_dir(out, args.force)  # refuse before simulating, not after
    return _run_one(scenario, out, args)


def _checked_trace(trace: Path | None) -> Path | None:
    if trace is not None and not (trace.is_file() or trace.is_dir()):
        raise SpecError("--trace", str(trace), "an existing trace file or directory")
    return trace


def _as_sweep_args(run_args: argparse.Namespace) -> argparse.Namespace:
    """`moesim run` on a sweep file is `moesim sweep` with the same flags: that command's defaults for the flags
    only it has (--backend, ...), this command's values for the others, and --no-files."""
    sweep = _Parser(prog="moesim sweep")
    _sweep_parser(sweep)
    args = sweep.parse_args(["--", str(run_args.scenario)])
    for name, value in vars(run_args).items():
        if name in vars(args) or name == "no_files":
            setattr(args, name, value)
    return args


def _check_cost(scenarios: list, args, write_files: bool, jobs: int = 1) -> None:
    from moesim.sim.estimate import check_cost  # noqa: PLC0415

    check_cost(scenarios, args.max_wall_s, args.max_memory_GiB, write_files, jobs)


def _simulate(scenario, label: str):
    from moesim.metrics.summary import summarize  # noqa: PLC0415
    from moesim.report.progress import Progress  # noqa: PLC0415
    from moesim.sim.simulate import simulate  # noqa: PLC0415

    result = simulate(scenario, progress=Progress(label, "steps"))
    return result, summarize(result)


def _run_one(scenario, out: Path, args) -> int:
    from moesim.report.run_dir import write_run  # noqa: PLC0415
    from moesim.report.text import format_summary  # noqa: PLC0415

    t0 = time.perf_counter()
    result, summary = _simulate(scenario, scenario.name)
    print(format_summary(summary, time.perf_counter() - t0))
    if not args.no_files:
        paths = write_run(out, result, summary, force=args.force)
        print(f"wrote {len(paths)} files to {out}/: " + ", ".join(p.name for p in paths))
    return 0


def _sweep(args) -> int:
    from moesim.sweep import check_backend, plan_sweep  # noqa: PLC0415

    check_backend(args.backend, args.address)  # one line for a bad choice or Ray not installed, before any work
    plan = plan_sweep(args.scenario, args.steps, args.seed, _checked_trace(args.trace))  # every point checked
    if not plan.keys:
        dropped = " other than routing keys (--trace replaces the routing)" if args.trace is not None else ""
        raise SpecError("sweep", None, f"a sweep: section{dropped} in {args.scenario} (`moesim run` runs one "
                                       "scenario)")
    return _sweep_plan(plan, args)


def _sweep_plan(plan, args) -> int:
    """Run a planned sweep into --out (resuming what is there), or with --no-files (`moesim run`) into a
    temporary directory that is removed at the end: the same workers, rows and table either way."""
    import tempfile  # noqa: PLC0415

    from moesim.io.staged_dir import default_run_dir  # noqa: PLC0415
    from moesim.sweep import prepare_sweep_dir  # noqa: PLC0415

    jobs = args.jobs if args.jobs is not None else (os.cpu_count() or 1)
    if jobs < 1:  # before the directory is made
        raise SpecError("--jobs", jobs, "a number of worker processes >= 1")
    if getattr(args, "no_files", False):
        with tempfile.TemporaryDirectory(prefix="moesim-sweep-") as tmp:
            return _sweep_into(plan, prepare_sweep_dir(Path(tmp), force=False), args, jobs, keep=False)
    return _sweep_into(plan, prepare_sweep_dir(args.out or default_run_dir(f"{plan.name}-sweep"), args.force),
                       args, jobs, keep=True)


def _sweep_into(plan, out: Path, args, jobs: int, keep: bool) -> int:
    from moesim.report.progress import Progress  # noqa: PLC0415
    from moesim.report.sweep import format_sweep_table, sweep_table, write_sweep_files  # noqa: PLC0415
    from moesim.sweep import SweepBackend, run_sweep  # noqa: PLC0415
    from moesim.sweep.rows import point_row as sweep_row  # noqa: PLC0415

    backend = SweepBackend(args.backend)  # checked by _sweep (`moesim run` on a sweep file: the default)
    todo = plan.todo(out)
    if todo:
        _check_cost([p.scenario for p in todo], args, write_files=False, jobs=min(jobs, len(todo)))
    where = f"{out}/points" if keep else "a temporary directory (--no-files)"
    print(f"{len(plan.points)} points: {len(plan.points) - len(todo)} already in {where}"
          + (f", simulating {len(todo)} in {min(jobs, len(todo))} processes" if todo else ""), file=sys.stderr)
    t0 = time.perf_counter()
    outcome = run_sweep(plan, out, jobs if backend is SweepBackend.PROCESSES else args.jobs, sweep_row,
                        Progress("sweep", "points"), backend, args.address)
    for line in outcome.failures:
        print(f"moesim: error: {line}", file=sys.stderr)
    if outcome.failures:
        kept = f"the others are in {out}/points" if keep else "nothing was kept (--no-files)"
        print(f"moesim: {len(outcome.failures)} of {len(todo)} points failed; {kept}", file=sys.stderr)
        return EXIT_FAILED
    table = sweep_table(outcome.rows, plan.keys)
    print(format_sweep_table(table.drop(columns="point_key"), plan.keys))
    print(f"{outcome.simulated} points simulated in {time.perf_counter() - t0:.1f} s wall with --jobs {jobs}, "
          f"{outcome.skipped} already done")
    if keep:
        names = [p.name for p in write_sweep_files(out, table, plan.keys, f"{plan.name}: {len(plan.points)} points")]
        print(f"wrote {', '.join(str(out / n) for n in names)} and {len(plan.points)} rows in {out}/points/; "
              f"`moesim report {out}` draws them")
    return 0


def _report(args) -> int:
    from moesim.report.sweep_report import write_sweep_report  # noqa: PLC0415

    paths = write_sweep_report(args.sweep_dir, args.out, force=args.force)
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def _plan(args) -> int:
    from moesim.io.strict import read_yaml_mapping  # noqa: PLC0415
    from moesim.loader import load_scenario  # noqa: PLC0415
    from moesim.plan.output import FILES, shortlist_markdown, write_plan  # noqa: PLC0415
    from moesim.plan.run import plan  # noqa: PLC0415
    from moesim.report.progress import Progress  # noqa: PLC0415

    sc = load_scenario(args.scenario)
    doc = read_yaml_mapping(args.scenario, "scenario")
    out = args.out if args.out is not None else Path("runs") / f"{sc.name}-plan"
    if out.exists() and not out.is_dir():  # before any work
        raise SpecError("--out", str(out), "a directory for the plan's files, not a file")
    if out.is_dir():
        for name in FILES:
            _refuse_overwrite(out / name, args.force)
    bars: dict = {}

    def progress(stage: str, done: int, total: int) -> None:  # each bar starts when its stage does
        bars.setdefault(stage, Progress(f"plan: {stage}", "candidates" if stage == "screen" else "choices"))
        bars[stage](done, total)

    result = plan(sc, progress=progress)
    title = f"moesim plan {args.scenario}"
    text = shortlist_markdown(result, title)
    print(text.split("\n## Why", 1)[0].rstrip())
    if result.winner is not None:
        print("why:\n" + "\n".join(f"  {line}" for line in result.winner.explanation))
    if out.is_dir():  # --force: what this run does not rewrite must not outlive it
        for name in FILES:
            (out / name).unlink(missing_ok=True)
    paths = write_plan(out, result, dict(doc), title)
    print(f"wrote {len(paths)} files to {out}/: {', '.join(p.name for p in paths)}")
    return 0 if result.winner is not None else EXIT_FAILED


def _execute(args) -> int:
    from moesim.execute.command import execute_plan  # noqa: PLC0415 - torch only for this command
    from moesim.execute.records import ExecuteError  # noqa: PLC0415
    from moesim.report.progress import Progress  # noqa: PLC0415

    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise SpecError("--timeout", args.timeout, "a finite number of seconds > 0")
    try:
        return execute_plan(args.plan_file, steps=args.steps, backend=args.backend, nproc=args.nproc,
                            threads=args.threads, compare_profile=args.compare, out=args.out, force=args.force,
                            timeout_s=args.timeout, progress=Progress("execute", "steps"),
                            command=" ".join(["moesim execute", *sys.argv[2:]]))
    except ExecuteError as err:
        print(f"moesim: execute failed: {err}", file=sys.stderr)
        return EXIT_FAILED


def _accuracy(args) -> int:
    import platform  # noqa: PLC0415

    if args.execute:
        return _accuracy_execute(args)
    for flag in ("profile", "nproc", "steps", "passes", "base"):
        if getattr(args, flag) is not None:
            raise SpecError(f"--{flag}", getattr(args, flag), "nothing without --execute (it sets up the executed "
                                                              "matrix): add --execute, or drop it")
    args.out = args.out if args.out is not None else Path("docs") / "accuracy.md"

    from moesim import __version__  # noqa: PLC0415
    from moesim.report.accuracy import (DEFAULT_MAX_MICRO_BATCHES, accuracy_markdown,  # noqa: PLC0415
                                        load_validation_set, read_baseline, refuse_overwrite, run_accuracy,
                                        write_accuracy)
    from moesim.report.progress import Progress  # noqa: PLC0415

    max_mbs = DEFAULT_MAX_MICRO_BATCHES if args.max_micro_batches is None else args.max_micro_batches
    baseline = read_baseline(args.baseline) if args.baseline is not None else None  # read before it is replaced
    if max_mbs < 2:
        raise SpecError("--max-micro-batches", max_mbs, "an integer >= 2")
    runs = load_validation_set(args.directory)  # every file checked before anything runs
    if args.only:
        missing = sorted(set(args.only) - {r.run_id for r in runs})
        if missing:
            raise SpecError("--only", missing[0], f"a run of {args.directory}: {', '.join(r.run_id for r in runs)}")
        runs = [r for r in runs if r.run_id in args.only]
    else:
        refuse_overwrite(args.out, args.force)  # before the simulations, not after
    t0 = time.perf_counter()
    rows = run_accuracy(runs, max_mbs, Progress("accuracy", "runs"))
    wall_s = time.perf_counter() - t0
    header = (f"Generated by `moesim accuracy {args.directory}` (moesim {__version__}) on "
              f"{time.strftime('%Y-%m-%d')}: {platform.machine()}, {os.cpu_count()} cores, Python "
              f"{platform.python_version()}; {len(rows)} runs simulated in {wall_s:.0f} s.")
    text = accuracy_markdown(rows, header, baseline)
    if args.only:
        print(text)
        return 0
    paths = write_accuracy(args.out, rows, header, force=args.force, baseline=baseline)
    print(text.split("\n\n## Order of layouts", 1)[0])
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def _speed_check(profile_path: Path, profile, matrix):
    """This machine's speed now against the profile's own expert FFN samples (moesim.calibration.drift), or the
    reason it cannot be checked."""
    from moesim.calibration import drift  # noqa: PLC0415 - torch only for this command

    if profile.calibration is None or not profile.calibration.expert_ffns:
        return "the profile has no expert FFN samples"
    print(f"timing the expert FFN against {profile.name}'s samples (a few seconds)", file=sys.stderr)
    try:
        samples = drift.profile_samples(profile_path, profile.calibration.samples)
        shapes = [(s.hidden_size, s.ffn_size) for s in matrix.SHAPES.values()]
        flush_bytes = drift.calibrated_cache_bytes(profile_path, profile.calibration.samples)
        return drift.speed_against(samples, shapes, flush_bytes)
    except SpecError as err:
        return str(err)


def _speed_text(before, after) -> str:
    from moesim.calibration.drift import SpeedCheck  # noqa: PLC0415

    if not (isinstance(before, SpeedCheck) and isinstance(after, SpeedCheck)):
        why = before if not isinstance(before, SpeedCheck) else after
        return f"This machine's speed against the profile's was not checked: {why}."
    return (f"This machine's speed against the profile's own samples (its expert FFN at the matrix's shapes, "
            f"{before.samples} samples re-timed the same way; time now / time at calibration, median): "
            f"**{before.ratio:.2f} before the runs, {after.ratio:.2f} after** (one rank alone: above 1 the machine "
            f"computes slower than when it was calibrated, and that part of the errors is the profile's age, not the "
            f"model's).")


def _accuracy_execute(args) -> int:
    import platform  # noqa: PLC0415

    from moesim import __version__  # noqa: PLC0415
    from moesim.execute import matrix  # noqa: PLC0415 - torch only for this command
    from moesim.execute.command import default_cpu_profile  # noqa: PLC0415
    from moesim.execute.records import ExecuteError  # noqa: PLC0415
    from moesim.io.profile import load_profile, resolve_profile  # noqa: PLC0415
    from moesim.io.results import write_text_atomic  # noqa: PLC0415
    from moesim.loader import load_scenario  # noqa: PLC0415
    from moesim.report.progress import Progress  # noqa: PLC0415

    out = args.out if args.out is not None else Path("docs") / "accuracy-executed.md"
    data = out.with_suffix(".json")
    for path in (out, data):
        _refuse_overwrite(path, args.force)  # before minutes of runs, not after
    args.steps = 3 if args.steps is None else args.steps
    args.passes = 2 if args.passes is None else args.passes
    if args.steps < 1:
        raise SpecError("--steps", args.steps, "an integer >= 1")
    if args.passes < 1:
        raise SpecError("--passes", args.passes, "an integer >= 1")
    nproc = args.nproc if args.nproc is not None else matrix.default_nproc()
    if nproc < 1:
        raise SpecError("--nproc", nproc, "an integer >= 1")
    profile_path = resolve_profile(args.profile if args.profile is not None else default_cpu_profile(nproc))
    profile = load_profile(profile_path)
    args.base = args.base if args.base is not None else Path("scenarios") / "quickstart.yaml"
    base = load_scenario(args.base)
    t0 = time.perf_counter()
    speed_before = _speed_check(profile_path, profile, matrix)
    try:
        cases = matrix.run_matrix(base, nproc, profile, args.steps, 1, 600.0, Progress("accuracy --execute", "runs"),
                                  passes=args.passes)
    except ExecuteError as err:
        print(f"moesim: execute failed: {err}", file=sys.stderr)
        return EXIT_FAILED
    header = (f"Generated by `moesim accuracy --execute --nproc {nproc} --steps {args.steps} --passes {args.passes}` "
              f"(moesim {__version__}) "
              f"on {time.strftime('%Y-%m-%d')}: {platform.machine()}, {os.cpu_count()} cores, Python "
              f"{platform.python_version()}, gloo, one thread per rank; {len(cases)} cases in "
              f"{time.perf_counter() - t0:.0f} s; base plan {args.base}.")
    speed = _speed_text(speed_before, _speed_check(profile_path, profile, matrix))
    header = f"{header}\n\n{speed}"
    text = matrix.markdown(cases, header, profile.name)
    print(text)
    write_text_atomic(out, text)
    write_text_atomic(data, matrix.as_json(cases, header, profile.name))
    print(f"wrote {out}, {data}")
    return 0


def _validate(args) -> int:
    """Check every file and report each; exit 2 when any is invalid."""
    from moesim.loader import load_scenarios  # noqa: PLC0415

    failed = 0
    for path in args.scenarios:
        try:
            keys, points = load_scenarios(path)
        except SpecError as err:
            print(f"moesim: error: {err.one_line()}", file=sys.stderr)
            failed += 1
            continue
        sc = points[0][1]
        extra = f", a sweep of {len(points)} points over {', '.join(keys)}" if keys else ""
        print(f"{path}: ok ({sc.name.split('[', 1)[0]}: {sc.model.name} on {sc.layout.world_size} GPUs{extra})")
    if failed and len(args.scenarios) > 1:
        print(f"moesim: {failed} of {len(args.scenarios)} files invalid", file=sys.stderr)
    return EXIT_BAD_INPUT if failed else 0


def _schema(args) -> int:
    import json  # noqa: PLC0415

    from moesim.io.results import write_text_atomic  # noqa: PLC0415
    from moesim.spec.schema import profile_json_schema, scenario_json_schema  # noqa: PLC0415

    schema = scenario_json_schema() if args.kind == "scenario" else profile_json_schema()
    text = json.dumps(schema, indent=2) + "\n"
    if args.out is None:
        print(text, end="")
        return 0
    _refuse_overwrite(args.out, args.force)
    print(f"wrote {write_text_atomic(args.out, text)}")
    return 0


def _dashboard(args) -> int:
    from moesim.dashboard import serve  # noqa: PLC0415 - the other commands never need it

    serve(args.host, args.port, args.max_wall_s, args.max_memory_GiB)  # returns only by raising
    return EXIT_FAILED


def _list(args) -> int:
    from moesim.io.profile import PROFILE_DIR, available_profiles, load_profile  # noqa: PLC0415
    from moesim.spec.presets import MODEL_PRESETS  # noqa: PLC0415

    profiles = available_profiles()
    width = 2 + max(len(n) for n in [*profiles, *MODEL_PRESETS])  # names in one column, however long
    print("hardware profiles (hw_profiles/):")
    for name in profiles:
        prof = load_profile(PROFILE_DIR / f"{name}.yaml")
        print(f"  {name:<{width}}{prof.node.gpus_per_node} x {prof.gpu.name}  [{prof.status}]")
    print("model presets:")
    for name, m in MODEL_PRESETS.items():
        print(f"  {name:<{width}}{m.total_params / 1e9:7.1f} B params, {m.active_params / 1e9:5.1f} B active, "
              f"{m.num_experts} experts top-{m.top_k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
