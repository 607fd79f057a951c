"""Measure sweep throughput on PostgreSQL + an MLflow tracking server, and where one trial's time goes.

Needs a running PostgreSQL and tracking server (docs/scale-out.md shows both), then:

    .venv/bin/python tools/measure_scale_out.py \\
        --storage postgresql://trainlib:PASSWORD@127.0.0.1:5432/optuna --tracking-uri http://127.0.0.1:5000

Prints markdown tables (throughput for 1, 2, 4 local workers; milliseconds per storage call, per tracking
call and per sampler call) and writes them as JSON with --json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import optuna
from mlflow.entities import Metric, Param

from trainlib.stores import redact, resolve_storage_url
from trainlib.sweep.storage import open_storage
from trainlib.tracking import PatientClient, ensure_experiment

# Requests a tracked trial makes to the server (trainlib.tracking): create run, params, one metric batch per
# epoch, end tags, end status, best metric, weights upload, the parent's best-so-far metric.
TRACKING_REQUESTS_PER_TRIAL = 7 + 3

log = logging.getLogger("measure_scale_out")
TRAINLIB = str(Path(sys.executable).parent / "trainlib")
EPOCHS = 3
CONFIG = f"""\
[study]
name = "placeholder"
n_trials = 1
sampler = "tpe"
pruner = "none"

[data]
dataset = "digits"

[model]
name = "mlp"
hidden_sizes = [16]

[training]
epochs = {EPOCHS}
device = "cpu"

[search]
lr = {{ low = 1e-3, high = 3e-2 }}
batch_size = [64, 128]
optimizer = ["sgd", "adam"]
momentum = {{ low = 0.0, high = 0.9 }}
"""


def median_ms(samples: list[float]) -> float:
    """The median of ``samples`` (seconds) in milliseconds, one decimal."""
    return round(1000 * statistics.median(samples), 1)


def measure_throughput(storage: str, tracking_uri: str, workers: int, trials_per_worker: int, folder: Path) -> dict:
    """Run one `trainlib sweep --workers N` on a fresh study; trials per minute while trials were running."""
    study_name = f"scale-{workers}w-{uuid.uuid4().hex[:6]}"
    config = folder / f"{study_name}.toml"
    config.write_text(CONFIG)
    command = [TRAINLIB, "sweep", str(config), "--study-name", study_name, "--storage", storage]
    command += [
        "--tracking-uri",
        tracking_uri,
        "--workers",
        str(workers),
        "--n-trials",
        str(workers * trials_per_worker),
    ]
    started = time.perf_counter()
    subprocess.run([*command, "--no-progress"], check=True, capture_output=True)
    wall_seconds = time.perf_counter() - started
    trials = optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)
    window = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
    client = PatientClient(tracking_uri)
    training = [
        sum(m.value for m in client.get_metric_history(t.user_attrs["mlflow_run_id"], "epoch_seconds")) for t in trials
    ]
    return {
        "workers": workers,
        "trials": len(trials),
        "command_seconds": round(wall_seconds, 1),
        "trial_window_seconds": round(window, 1),
        "trials_per_minute": round(60 * len(trials) / window, 1),
        "median_trial_seconds": round(statistics.median(t.duration.total_seconds() for t in trials), 2),
        "median_training_seconds": round(statistics.median(training), 2),
    }


def measure_storage_calls(storage: str, trials: int = 40) -> dict:
    """Milliseconds per Optuna storage round trip, as a worker makes them for each trial (random sampler)."""
    study = optuna.create_study(
        study_name=f"calls-{uuid.uuid4().hex[:6]}",
        storage=open_storage(storage),
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    ask, report, tell = [], [], []
    for _ in range(trials):
        started = time.perf_counter()
        trial = study.ask()
        trial.suggest_float("lr", 1e-3, 3e-2, log=True)
        trial.suggest_categorical("batch_size", [64, 128])
        trial.suggest_categorical("optimizer", ["sgd", "adam"])
        ask.append(time.perf_counter() - started)
        for epoch in range(1, EPOCHS + 1):
            started = time.perf_counter()
            trial.report(0.5, epoch)
            report.append(time.perf_counter() - started)
        started = time.perf_counter()
        study.tell(trial, 0.5)
        tell.append(time.perf_counter() - started)
    per_trial = statistics.median(ask) + EPOCHS * statistics.median(report) + statistics.median(tell)
    return {
        "ask_and_suggest_ms": median_ms(ask),
        "report_ms": median_ms(report),
        "tell_ms": median_ms(tell),
        "per_trial_ms": round(1000 * per_trial, 1),
    }


def measure_tracking_calls(tracking_uri: str, trials: int = 30) -> dict:
    """Milliseconds per tracking-server request, as a worker makes them for each trial."""
    client = PatientClient(tracking_uri)
    experiment_id = ensure_experiment(client, tracking_uri, f"calls-{uuid.uuid4().hex[:6]}")
    create, params, metrics, upload, end = [], [], [], [], []
    weights = Path(tempfile.mkdtemp(prefix="scale-out-")) / "model_state.pt"
    weights.write_bytes(os.urandom(20_000))  # about the size of the tiny MLP's weights
    for number in range(trials):
        started = time.perf_counter()
        run_id = client.create_run(
            experiment_id, run_name=f"trial-{number}", tags={"trainlib.role": "trial"}
        ).info.run_id
        create.append(time.perf_counter() - started)
        started = time.perf_counter()
        client.log_batch(run_id, params=[Param(key, "1") for key in ("lr", "batch_size", "optimizer", "momentum")])
        params.append(time.perf_counter() - started)
        for epoch in range(1, EPOCHS + 1):
            started = time.perf_counter()
            batch = [Metric(key, 0.5, int(time.time() * 1000), epoch) for key in ("a", "b", "c", "d", "e")]
            client.log_batch(run_id, metrics=batch)
            metrics.append(time.perf_counter() - started)
        started = time.perf_counter()
        client.log_artifact(run_id, str(weights))
        upload.append(time.perf_counter() - started)
        started = time.perf_counter()
        client.set_terminated(run_id, "FINISHED")
        end.append(time.perf_counter() - started)
    per_trial = sum(statistics.median(samples) for samples in (create, params, upload, end))
    per_trial += EPOCHS * statistics.median(metrics)
    return {
        "create_run_ms": median_ms(create),
        "log_params_ms": median_ms(params),
        "log_epoch_metrics_ms": median_ms(metrics),
        "upload_weights_ms": median_ms(upload),
        "end_run_ms": median_ms(end),
        "per_trial_ms": round(1000 * per_trial, 1),
    }


def in_threads(clients: int, work: Any) -> float:
    """Run ``work(index)`` in ``clients`` threads at once; return the wall-clock seconds."""
    threads = [threading.Thread(target=work, args=(index,)) for index in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def measure_capacity(storage: str, tracking_uri: str, clients: int = 8, rounds: int = 15) -> dict:
    """What the database and the tracking server sustain with ``clients`` concurrent callers (one machine)."""
    study_name = f"capacity-{uuid.uuid4().hex[:6]}"
    optuna.create_study(study_name=study_name, storage=open_storage(storage))

    def storage_work(index: int) -> None:
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage))
        study.sampler = optuna.samplers.RandomSampler(seed=index)
        for _ in range(rounds):
            trial = study.ask()
            trial.suggest_float("lr", 1e-3, 3e-2, log=True)
            for epoch in range(1, EPOCHS + 1):
                trial.report(0.5, epoch)
            study.tell(trial, 0.5)

    client = PatientClient(tracking_uri)
    experiment_id = ensure_experiment(client, tracking_uri, f"capacity-{uuid.uuid4().hex[:6]}")
    run_ids = [client.create_run(experiment_id, f"c{index}", {}).info.run_id for index in range(clients)]

    def tracking_work(index: int) -> None:
        own = PatientClient(tracking_uri)
        for step in range(rounds):
            own.log_batch(run_ids[index], metrics=[Metric("m", 0.5, int(time.time() * 1000), step)])

    storage_seconds = in_threads(clients, storage_work)
    tracking_seconds = in_threads(clients, tracking_work)
    return {
        "clients": clients,
        "storage_trials_per_second": round(clients * rounds / storage_seconds, 1),
        "tracking_requests_per_second": round(clients * rounds / tracking_seconds, 1),
    }


def measure_sampler(history_sizes: tuple[int, ...] = (100, 1000)) -> list[dict]:
    """Milliseconds for one TPE ask (multivariate, as the sweep uses it) after N finished trials, in memory."""
    distributions = {
        "lr": optuna.distributions.FloatDistribution(1e-3, 3e-2, log=True),
        "batch_size": optuna.distributions.CategoricalDistribution([64, 128]),
        "optimizer": optuna.distributions.CategoricalDistribution(["sgd", "adam"]),
    }
    rows = []
    for size in history_sizes:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, multivariate=True, group=True))
        random_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        for _ in range(size):
            trial = random_study.ask(distributions)
            random_study.tell(trial, float(trial.params["lr"]))
        study.add_trials(random_study.get_trials(deepcopy=False))
        samples = []
        for _ in range(10):
            started = time.perf_counter()
            study.ask(distributions)
            samples.append(time.perf_counter() - started)
        rows.append({"finished_trials": size, "tpe_ask_ms": median_ms(samples)})
    return rows


def main() -> None:
    """Run every measurement and print markdown tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True, help="PostgreSQL URL for Optuna")
    parser.add_argument("--tracking-uri", required=True, help="http://HOST:PORT of `make server`")
    parser.add_argument("--workers", default="1,2,4", help="comma-separated local worker counts")
    parser.add_argument("--trials-per-worker", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = resolve_storage_url(arguments.storage)
    figures: dict[str, Any] = {
        "machine": {"cpu_cores": os.cpu_count(), "load_average_1min_at_start": round(os.getloadavg()[0], 2)},
        "storage": redact(storage),
        "tracking_uri": redact(arguments.tracking_uri),
    }
    log.info("storage calls ...")
    figures["storage_calls"] = measure_storage_calls(storage)
    log.info("tracking calls ...")
    figures["tracking_calls"] = measure_tracking_calls(arguments.tracking_uri)
    log.info("sampler ...")
    figures["sampler"] = measure_sampler()
    log.info("capacity ...")
    figures["capacity"] = measure_capacity(storage, arguments.tracking_uri)
    figures["throughput"] = []
    with tempfile.TemporaryDirectory(prefix="scale-out-") as folder:
        for workers in (int(text) for text in arguments.workers.split(",")):
            log.info("throughput with %d local workers ...", workers)
            figures["throughput"].append(
                measure_throughput(storage, arguments.tracking_uri, workers, arguments.trials_per_worker, Path(folder))
            )
    figures["machine"]["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    if arguments.json:
        arguments.json.write_text(json.dumps(figures, indent=2) + "\n")
    log.info("%s", render(figures))


def render(figures: dict[str, Any]) -> str:
    """The figures as markdown tables."""
    lines = [f"machine: {figures['machine']}", ""]
    lines.append("| workers | trials | trials/min | median trial s | of which training s | command s |")
    lines.append("|---|---|---|---|---|---|")
    for row in figures["throughput"]:
        lines.append(
            f"| {row['workers']} | {row['trials']} | {row['trials_per_minute']} | {row['median_trial_seconds']} "
            f"| {row['median_training_seconds']} | {row['command_seconds']} |"
        )
    for section in ("storage_calls", "tracking_calls"):
        lines += ["", f"{section} (median ms): {figures[section]}"]
    lines += ["", f"sampler (TPE, median ms per ask): {figures['sampler']}"]
    capacity = figures["capacity"]
    ceiling = 60 * capacity["tracking_requests_per_second"] / TRACKING_REQUESTS_PER_TRIAL
    lines += ["", f"capacity: {capacity}; tracking server ceiling ~{ceiling:.0f} trials/min"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
