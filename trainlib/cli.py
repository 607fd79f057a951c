"""Command line: thin. Parses, calls one function, prints, sets the exit code.

A mistake a user can make (bad flag, config, storage URL, device) is one line on stderr and exit 2.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from typing import TYPE_CHECKING, Any, NoReturn

import click

from trainlib.errors import InvalidArgument
from trainlib.store_failures import (
    GRACE_PERIOD_SECONDS,
    HEARTBEAT_INTERVAL_SECONDS,
    MAX_OUTAGE_SECONDS,
    StoreDamaged,
    StoreUnavailable,
    first_line,
)
from trainlib.stores import mlflow_server_command, redact

if TYPE_CHECKING:
    from trainlib.sweep import SweepSummary

USAGE_ERROR = 2
STORE_UNAVAILABLE = 3  # a store stayed unreachable past --max-outage, or cannot be used (read-only, corrupt)
SIGNAL_EXIT = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal's number, as a shell reports it
# Loggers that print a traceback for store errors trainlib reports itself in one line (shown with -v).
NOISY_LOGGERS = ("mlflow.store.db.utils", "alembic.runtime.migration")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def cli(verbose: bool) -> None:
    """trainlib: Optuna sweeps tracked in MLflow, and epoch-throughput benchmarks."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)


# ---- commands are registered below by their modules' entry functions ----


@cli.command()
@click.argument("config_file", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option(
    "--n-trials",
    type=int,
    help="New trials this command runs (shared among --workers), retries of dead workers' trials on top; "
    "0 only finishes an existing study (retries, report); default: the config's.",
)
@click.option("--epochs", type=int, help="Override training.epochs.")
@click.option(
    "--time-budget",
    type=float,
    help="Seconds after the command's start when no new trial starts (the running ones finish, the report is "
    "written, exit 0); default: study.time_budget_seconds.",
)
@click.option(
    "--reevaluate",
    "reevaluate_top",
    type=int,
    help="Train the K best configurations again from new seeds and pick the model on their means "
    "[default: study.reevaluate_top, 0].",
)
@click.option("--seeds", "reevaluate_seeds", type=int, help="New seeds per re-evaluated configuration [default: 3].")
@click.option("--study-seed", type=int, help="Override study.seed (the sampler's seed).")
@click.option("--study-name", help="Override study.name (the Optuna study and the MLflow experiment).")
@click.option(
    "--storage", help="Optuna storage URL [default: journal file under mlruns/, or $TRAINLIB_OPTUNA_STORAGE]."
)
@click.option("--tracking-uri", help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI, or sqlite under mlruns/].")
@click.option("--workers", type=int, default=1, show_default=True, help="Worker processes on this machine.")
@click.option("--device", help="Override training.device: auto, cpu, cuda, cuda:N or mps.")
@click.option("--no-tracking", is_flag=True, help="Do not log to MLflow (to measure tracking overhead).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option(
    "--heartbeat-interval",
    type=int,
    default=HEARTBEAT_INTERVAL_SECONDS,
    show_default=True,
    help="Seconds between a running trial's heartbeats (PostgreSQL/MySQL storage).",
)
@click.option(
    "--grace-period",
    type=int,
    default=GRACE_PERIOD_SECONDS,
    show_default=True,
    help="Seconds without heartbeat after which another worker fails the trial and retries it once.",
)
@click.option(
    "--max-outage",
    type=int,
    default=MAX_OUTAGE_SECONDS,
    show_default=True,
    help="Seconds a worker waits out an unreachable database or tracking server before it exits (code 3).",
)
def sweep(
    config_file: str,
    n_trials: int | None,
    epochs: int | None,
    time_budget: float | None,
    reevaluate_top: int | None,
    reevaluate_seeds: int | None,
    study_seed: int | None,
    study_name: str | None,
    storage: str | None,
    tracking_uri: str | None,
    workers: int,
    device: str | None,
    no_tracking: bool,
    no_progress: bool,
    heartbeat_interval: int,
    grace_period: int,
    max_outage: int,
) -> None:
    """Run an Optuna study from an experiment CONFIG (TOML), every trial tracked in MLflow."""
    from trainlib.sweep import SweepInterrupted, install_interrupt_handler, load_config, plan_sweep, run_sweep

    config = load_config(config_file).with_overrides(
        {
            "study.n_trials": ("--n-trials", n_trials or None),  # 0 is for this command only (plan_sweep)
            "study.name": ("--study-name", study_name),
            "study.seed": ("--study-seed", study_seed),
            "training.epochs": ("--epochs", epochs),
            "training.device": ("--device", device),
        }
    )
    plan = plan_sweep(
        config,
        config_file,
        n_trials=n_trials,
        storage=storage,
        tracking_uri=tracking_uri,
        workers=workers,
        tracking=not no_tracking,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        max_outage_seconds=max_outage,
        time_budget_seconds=time_budget,
        reevaluate_top=reevaluate_top,
        reevaluate_seeds=reevaluate_seeds,
    )
    # Ctrl-C (and SIGTERM) become KeyboardInterrupt even where the shell started us with SIGINT ignored,
    # so an interrupted sweep always closes its runs and trials.
    install_interrupt_handler()
    try:
        summary = run_sweep(plan, show_progress=not no_progress)
    except SweepInterrupted as stopped:
        flags = {"--study-name": study_name, "--storage": storage, "--tracking-uri": tracking_uri}
        given = "".join(f" {flag} {shlex.quote(redact(value))}" for flag, value in flags.items() if value)
        given += " --no-tracking" if no_tracking else ""
        if stopped.during == "report":
            hint = f"the report was not written; write it with: trainlib sweep {config_file} --n-trials 0{given}"
        else:
            hint = f"open runs and trials were closed. Resume with: trainlib sweep {config_file}{given}"
        click.echo(f"\ninterrupted ({stopped.signal_name}): {hint}", err=True)
        exit_now(SIGNAL_EXIT.get(stopped.signal_name, 130))
    click.echo(format_summary(summary))


def exit_now(code: int) -> NoReturn:
    """Exit with ``code`` once every run is closed, skipping the interpreter's shutdown.

    CPython turns any exit into "killed by SIGINT" when an interrupt once escaped code run through its C API
    (e.g. a Ctrl-C landing in a lazy import inside torch), so SIGTERM would not be reported as 143. Output and
    log handlers are flushed first; the sweep has already ended its runs, workers and tracking thread.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def format_summary(summary: SweepSummary) -> str:
    """The end-of-sweep report: counts, top trials, the front, the chosen model and its test accuracy."""
    lines = [
        f"\nstudy {summary.study_name}: {summary.counts['complete']} complete, {summary.counts['pruned']} pruned, "
        f"{summary.counts['failed']} failed ({summary.seconds:.0f} s for this command)",
    ]
    if summary.budget_spent:
        lines.append("the time budget was spent: no trial started after it (a rerun adds trials as usual)")

    def table(frame: Any) -> str:
        return frame.to_string(index=False, float_format=lambda value: f"{value:.4g}")

    if len(summary.top_trials):
        lines += ["", "top trials:", table(summary.top_trials)]
    if summary.front is not None and len(summary.front):
        lines += ["", f"Pareto front ({len(summary.front)} trials):", table(summary.front)]
    if summary.reevaluation is not None and len(summary.reevaluation):
        lines += ["", "re-evaluated with new seeds (mean and standard deviation):", table(summary.reevaluation)]
    if summary.best_params is not None:
        lines += [
            "",
            f"chosen: trial {summary.chosen_trial} ({summary.selection_rule})",
            f"its best value: {summary.best_value:.4f}",
            f"its params: {summary.best_params}",
        ]
    if summary.test_accuracy is not None:
        lines.append(f"best model's test accuracy (held-out split): {summary.test_accuracy:.4f}")
    if summary.report_deferred:
        lines.append(
            "other workers are still running trials: the last one to finish logs the report and best model "
            "(if they all die, `trainlib sweep CONFIG --n-trials 0` with the same study finishes it)"
        )
    if summary.parent_run_id:
        lines += [
            "",
            f"MLflow: {redact(summary.tracking_uri)} (parent run {summary.parent_run_id})",
            "compare trials: make ui",
        ]
    return "\n".join(lines)


@cli.command("bench-report")
@click.argument("json_file", metavar="FILE.json", type=click.Path(dir_okay=False))
@click.option("--out-dir", default="bench/reports", show_default=True, help="Folder for throughput.md/.csv/.png.")
@click.option("--tracking-uri", help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI, or sqlite under mlruns/].")
@click.option("--no-tracking", is_flag=True, help="Write the report files only; log nothing to MLflow.")
def bench_report(json_file: str, out_dir: str, tracking_uri: str | None, no_tracking: bool) -> None:
    """Turn a pytest-benchmark FILE.json from bench/ into tables, a chart and MLflow runs (experiment 'throughput')."""
    from trainlib.bench_report import write_reports

    report = write_reports(json_file, out_dir, tracking_uri, track=not no_tracking)
    for path in report.files:
        click.echo(f"wrote {path}")
    if report.run_id:
        click.echo(f"MLflow: experiment 'throughput', parent run {report.run_id}")


REGRESSION = 1  # bench-compare: the candidate is slower


@cli.command("bench-compare")
@click.argument("baseline", metavar="BASELINE.json", type=click.Path(dir_okay=False))
@click.argument("candidate", metavar="CANDIDATE.json", type=click.Path(dir_okay=False))
@click.option(
    "--min-effect",
    type=float,
    default=0.05,
    show_default=True,
    help="Smallest slowdown of the whole suite (geometric mean) that counts; smaller ones are not regressions.",
)
@click.option(
    "--case-min-effect",
    type=float,
    default=0.15,
    show_default=True,
    help="Smallest slowdown of one case alone that counts (one case moves more between runs than the suite).",
)
@click.option(
    "--machine-min-effect",
    type=float,
    default=0.30,
    show_default=True,
    help="Smallest slowdown of the raw times (a slower or busier machine) that counts.",
)
@click.option(
    "--alpha", type=float, default=0.05, show_default=True, help="Significance level, after Holm's correction."
)
def bench_compare(
    baseline: str, candidate: str, min_effect: float, case_min_effect: float, machine_min_effect: float, alpha: float
) -> None:
    """Exit 1 when the CANDIDATE bench run is slower than BASELINE (a statistical test per case and over the suite)."""
    from trainlib.bench_gate import compare_runs, render_table

    result = compare_runs(
        baseline,
        candidate,
        min_effect=min_effect,
        case_min_effect=case_min_effect,
        machine_min_effect=machine_min_effect,
        alpha=alpha,
    )
    click.echo(render_table(result))
    if result.regression:
        sys.exit(REGRESSION)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (0.0.0.0: every machine).")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@click.option("--backend-store-uri", help="Runs database [default: the sqlite store under mlruns/ that sweeps write].")
@click.option("--artifacts-destination", help="Where proxied artifacts go [default: mlruns/artifacts].")
@click.option("--dry-run", is_flag=True, help="Print the resolved command and exit.")
@click.argument("mlflow_args", nargs=-1, type=click.UNPROCESSED)
def server(
    host: str,
    port: int,
    backend_store_uri: str | None,
    artifacts_destination: str | None,
    dry_run: bool,
    mlflow_args: tuple[str, ...],
) -> None:
    """Start `mlflow server --serve-artifacts` for sweeps on several machines; extra MLFLOW_ARGS pass through."""
    from trainlib.stores import mlruns_dir

    command = mlflow_server_command(host, port, backend_store_uri, artifacts_destination, mlflow_args)
    click.echo(" ".join(shlex.quote(redact(part)) for part in command))
    if dry_run:
        return
    if backend_store_uri is None:
        mlruns_dir().mkdir(parents=True, exist_ok=True)
    # The job runner serves GenAI evaluation jobs, which sweeps never start; it costs a few processes per server.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.execv(command[0], command)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (0.0.0.0: every interface).")
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@click.option("--tracking-uri", help="MLflow store to show [default: $MLFLOW_TRACKING_URI, or sqlite under mlruns/].")
@click.option("--dry-run", is_flag=True, help="Print the address and the resolved command, start nothing.")
def ui(host: str, port: int, tracking_uri: str | None, dry_run: bool) -> None:
    """Start the MLflow UI on the store sweeps write; print the address of the latest study."""
    from trainlib.ui import (
        ALL_INTERFACES,
        ensure_store_folder,
        experiment_address,
        latest_study,
        ui_address,
        ui_command,
    )

    command, uri = ui_command(host, port, tracking_uri)
    address = ui_address(host, port)
    study = latest_study(uri)
    click.echo(f"MLflow UI over {redact(uri)}")
    if study is None:
        click.echo(f"no study there yet (make sweep): {address}")
    else:
        click.echo(f"latest study {study[0]!r}: {experiment_address(address, study[1])}")
    if host in ALL_INTERFACES:
        click.echo(f"listening on every interface: other machines open port {port} of this machine's address")
    if dry_run:
        click.echo(" ".join(shlex.quote(redact(part)) for part in command))
        return
    click.echo("Ctrl-C stops it")
    sys.stdout.flush()
    ensure_store_folder(uri)
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # GenAI jobs; sweeps start none
    os.execv(command[0], command)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI, turning user errors into one line and exit code 2."""
    try:
        result = cli.main(args=argv, prog_name="trainlib", standalone_mode=False)
    except KeyboardInterrupt:
        click.echo("trainlib: interrupted", err=True)
        sys.exit(130)
    except click.exceptions.Abort:
        click.echo("trainlib: aborted", err=True)
        sys.exit(130)
    except click.UsageError as error:
        click.echo(f"trainlib: error: {error.format_message()}", err=True)
        sys.exit(USAGE_ERROR)
    except click.ClickException as error:  # bad file path and the like
        click.echo(f"trainlib: error: {error.format_message()}", err=True)
        sys.exit(USAGE_ERROR)
    except InvalidArgument as error:
        click.echo(f"trainlib: error: {error}", err=True)
        sys.exit(USAGE_ERROR)
    except (StoreUnavailable, StoreDamaged) as error:
        click.echo(f"trainlib: error: {error}", err=True)
        sys.exit(STORE_UNAVAILABLE)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except Exception as error:  # a failure trainlib did not foresee: its runs are ended; one line unless -v
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            raise
        click.echo(f"trainlib: error: {type(error).__name__}: {first_line(error)} (-v shows the traceback)", err=True)
        sys.exit(1)
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
