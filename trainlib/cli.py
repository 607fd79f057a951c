"""Command line: thin. Parses, calls one function, prints, sets the exit code.

A mistake a user can make (bad flag, config, storage URL, device) is one line on stderr and exit 2.
"""

from __future__ import annotations

import logging
import sys

import click

from trainlib.errors import InvalidArgument

USAGE_ERROR = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def cli(verbose: bool) -> None:
    """trainlib: Optuna sweeps tracked in MLflow, and epoch-throughput benchmarks."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


# ---- commands are registered below by their modules' entry functions ----


@cli.command()
@click.argument("config_file", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--n-trials", type=int, help="Trials this command runs (shared among --workers); default: the config's.")
@click.option("--epochs", type=int, help="Override training.epochs.")
@click.option("--study-name", help="Override study.name (the Optuna study and the MLflow experiment).")
@click.option(
    "--storage", help="Optuna storage URL [default: journal file under mlruns/, or $TRAINLIB_OPTUNA_STORAGE]."
)
@click.option("--tracking-uri", help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI, or sqlite under mlruns/].")
@click.option("--workers", type=int, default=1, show_default=True, help="Worker processes on this machine.")
@click.option("--device", help="Override training.device: auto, cpu, cuda, cuda:N or mps.")
@click.option("--no-tracking", is_flag=True, help="Do not log to MLflow (to measure tracking overhead).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def sweep(
    config_file: str,
    n_trials: int | None,
    epochs: int | None,
    study_name: str | None,
    storage: str | None,
    tracking_uri: str | None,
    workers: int,
    device: str | None,
    no_tracking: bool,
    no_progress: bool,
) -> None:
    """Run an Optuna study from an experiment CONFIG (TOML), every trial tracked in MLflow."""
    from trainlib.config import load_config
    from trainlib.sweep import SweepInterrupted, plan_sweep, run_sweep

    config = load_config(config_file).with_overrides(
        source=config_file,
        **{"study.n_trials": n_trials, "study.name": study_name, "training.epochs": epochs, "training.device": device},
    )
    plan = plan_sweep(
        config,
        config_file,
        n_trials=n_trials,
        storage=storage,
        tracking_uri=tracking_uri,
        workers=workers,
        tracking=not no_tracking,
    )
    try:
        summary = run_sweep(plan, show_progress=not no_progress)
    except SweepInterrupted:
        resume = f"trainlib sweep {config_file}" + (f" --study-name {study_name}" if study_name else "")
        click.echo(f"\ninterrupted: open runs and trials were closed. Resume with: {resume}", err=True)
        sys.exit(130)
    click.echo(format_summary(summary))


def format_summary(summary: object) -> str:
    """The end-of-sweep report: counts, top trials, best parameters, test accuracy, how to look at it."""
    lines = [
        f"\nstudy {summary.study_name}: {summary.counts['complete']} complete, {summary.counts['pruned']} pruned, "
        f"{summary.counts['fail']} failed ({summary.seconds:.0f} s for this command)",
    ]
    if len(summary.top_trials):
        lines += ["", "top trials:", summary.top_trials.to_string(index=False, float_format=lambda v: f"{v:.4g}")]
    if summary.best_params is not None:
        lines += ["", f"best value: {summary.best_value:.4f}", f"best params: {summary.best_params}"]
    if summary.test_accuracy is not None:
        lines.append(f"best model's test accuracy (held-out split): {summary.test_accuracy:.4f}")
    if summary.parent_run_id:
        lines += ["", f"MLflow: {summary.tracking_uri} (parent run {summary.parent_run_id})", "compare trials: make ui"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI, turning user errors into one line and exit code 2."""
    try:
        cli.main(args=argv, prog_name="trainlib", standalone_mode=False)
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
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
