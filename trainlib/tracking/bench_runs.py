"""Bench results as MLflow runs (experiment 'throughput'): one parent run per bench run, one child run per case."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from trainlib.stores import redact
from trainlib.tracking.client import ensure_experiment

log = logging.getLogger(__name__)
BENCH_SHA256_TAG, BENCH_FILE_TAG = "trainlib.bench_sha256", "trainlib.bench_file"

# machine_info keys logged as the parent run's params
MACHINE_PARAMS = (
    "torch_version",
    "cuda_version",
    "cudnn_version",
    "gpu_name",
    "gpu_count",
    "cpu_model",
    "cpu_count",
    "usable_cpu_count",
    "torch_num_threads",
    "python_version",
    "numpy_version",
    "mnist1d_version",
    "pytest_benchmark_version",
    "system",
    "release",
)


def log_bench_run(
    cases: pd.DataFrame,
    machine_info: dict[str, Any],
    tags: dict[str, str],
    files: list[Path],
    tracking_uri: str,
    experiment_name: str,
) -> str:
    """Log a bench run as a parent run (``tags``, machine info, ``files``) with one child run per case.

    Returns the parent run id. A bench run already logged (the same BENCH_SHA256_TAG) is not logged twice.
    """
    client = MlflowClient(tracking_uri)
    experiment_id = ensure_experiment(client, tracking_uri, experiment_name)
    sha256 = tags[BENCH_SHA256_TAG]
    already = client.search_runs(
        [experiment_id], filter_string=f"tags.`{BENCH_SHA256_TAG}` = '{sha256}'", max_results=1
    )
    if already:
        run_id = already[0].info.run_id
        log.info("bench run %s is already in MLflow as run %s; not logging it again", tags[BENCH_FILE_TAG], run_id)
        return run_id
    parent = client.create_run(
        experiment_id,
        run_name=f"bench {tags['bench.datetime'][:19]}",
        tags={"trainlib.role": "bench", **tags},
    )
    parent_id = parent.info.run_id
    try:
        params = [Param(key, str(machine_info[key])[:6000]) for key in MACHINE_PARAMS if key in machine_info]
        client.log_batch(parent_id, params=params)
        now = int(time.time() * 1000)
        for row in cases.itertuples():
            _log_case(client, experiment_id, parent_id, row, now)
        for path in files:
            client.log_artifact(parent_id, str(path))
    except BaseException:
        client.set_terminated(parent_id, "FAILED")
        raise
    client.set_terminated(parent_id, "FINISHED")
    log.info(
        "logged %d cases to experiment %r at %s (run %s)",
        len(cases),
        experiment_name,
        redact(tracking_uri),
        parent_id,
    )
    return parent_id


def _log_case(client: MlflowClient, experiment_id: str, parent_id: str, row: Any, timestamp_ms: int) -> None:
    run = client.create_run(
        experiment_id, run_name=row.name, tags={"mlflow.parentRunId": parent_id, "trainlib.role": "bench-case"}
    )
    params = {
        "device": row.device,
        "device_name": row.device_name,
        "num_workers": row.num_workers,
        "workload": row.workload,
        "loader": row.loader,
        "memory": row.memory,
        "batch_size": row.batch_size,
        "dataset_size": row.dataset_size,
        "group": row.group,
    }
    if row.loop:
        params["loop"] = row.loop
    metrics = {
        "samples_per_second": row.samples_per_second,
        "median_epoch_seconds": row.median_epoch_seconds,
        "samples_per_second_iqr": row.samples_per_second_iqr,
        "rounds": row.rounds,
    }
    for key in ("samples_per_second_low", "samples_per_second_high", "speedup", "speedup_low", "speedup_high"):
        if not math.isnan(getattr(row, key)):
            metrics[key] = getattr(row, key)
    if row.speedup_verdict:
        params["speedup_verdict"] = row.speedup_verdict
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(key, float(value), timestamp_ms, 0) for key, value in metrics.items()],
        params=[Param(key, str(value)) for key, value in params.items()],
        tags=[RunTag("mlflow.note.content", f"pytest-benchmark case {row.name}")],
    )
    client.set_terminated(run.info.run_id, "FINISHED")
