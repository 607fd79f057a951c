"""The MLflow UI over the store `trainlib sweep` writes: which address to open, and the server command line.

`make ui` runs `trainlib ui`, which prints the latest study's address and then becomes `mlflow server`
(stores.mlflow_server_command: the embedded sqlite store, artifacts under mlruns/artifacts).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from trainlib.errors import InvalidArgument
from trainlib.stores import mlflow_server_command, redact, resolve_tracking_uri

STUDY_ROLE_FILTER = "tags.`trainlib.role` = 'study'"
# The MLflow 3 UI opens an experiment on its GenAI overview unless told this is model training.
RUNS_VIEW = "runs?workflowType=machine_learning"
ALL_INTERFACES = ("0.0.0.0", "::", "")


def ui_address(host: str, port: int) -> str:
    """The address a browser on this machine opens for a UI bound to ``host``."""
    shown = "127.0.0.1" if host in ALL_INTERFACES else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def experiment_address(address: str, experiment_id: str) -> str:
    """The runs table of experiment ``experiment_id`` in the UI at ``address``."""
    return f"{address}/#/experiments/{experiment_id}/{RUNS_VIEW}"


def latest_study(tracking_uri: str) -> tuple[str, str] | None:
    """(study name, experiment id) of the study whose parent run started last; None when there is none."""
    if _is_missing_sqlite_file(tracking_uri):
        return None
    from mlflow import MlflowClient

    try:
        client = MlflowClient(tracking_uri)
        experiment_ids = [experiment.experiment_id for experiment in client.search_experiments()]
        runs = experiment_ids and client.search_runs(
            experiment_ids, filter_string=STUDY_ROLE_FILTER, order_by=["attributes.start_time DESC"], max_results=1
        )
    except Exception as error:  # MLflow and sqlalchemy raise many kinds; the user needs one line
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InvalidArgument(f"cannot open MLflow store {redact(tracking_uri)}: {first_line}") from None
    if not runs:
        return None
    return runs[0].info.run_name, runs[0].info.experiment_id


def ui_command(host: str, port: int, tracking_uri: str | None = None, workers: int = 1) -> tuple[list[str], str]:
    """(the `mlflow server` command line, the tracking URI it serves) for the UI over the sweep's store."""
    uri = resolve_tracking_uri(tracking_uri)
    if urlsplit(uri).scheme in ("http", "https"):
        raise InvalidArgument(
            f"tracking URI {redact(uri)} is a tracking server, which serves its own UI: open it in a browser"
        )
    command = mlflow_server_command(host=host, port=port, backend_store_uri=uri, extra_args=("--workers", str(workers)))
    return command, uri


def ensure_store_folder(tracking_uri: str) -> None:
    """Create the folder of a sqlite store, which sqlite itself will not do."""
    if tracking_uri.startswith("sqlite:///") and _is_missing_sqlite_file(tracking_uri):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def _is_missing_sqlite_file(uri: str) -> bool:
    if not uri.startswith("sqlite:///"):
        return False
    path = uri.removeprefix("sqlite:///")
    return path != ":memory:" and not Path(path).exists()
