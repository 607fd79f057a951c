"""Where results go: the one place that resolves the MLflow tracking URI and the Optuna storage.

Embedded default: everything under ./mlruns (MLflow in sqlite, Optuna in a journal file that is
safe for several local worker processes). Overrides: a flag, then an environment variable.
Scale-out (docs/scale-out.md): PostgreSQL for Optuna, `mlflow server` for tracking. What happens when a store
is lost or broken: store_failures.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit, urlunsplit

from trainlib.errors import InvalidArgument

TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "http", "https")
STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql", "journal")


def mlruns_dir() -> Path:
    """The local store folder: $TRAINLIB_MLRUNS_DIR, else ./mlruns."""
    return Path(os.environ.get("TRAINLIB_MLRUNS_DIR", "mlruns")).resolve()


def local_tracking_uri() -> str:
    """The embedded MLflow store: sqlite under mlruns/ (what `make sweep` writes and `make server` serves)."""
    return f"sqlite:///{mlruns_dir() / 'mlflow.db'}"


def resolve_tracking_uri(flag: str | None = None) -> str:
    """The MLflow tracking URI: --tracking-uri, else $MLFLOW_TRACKING_URI, else sqlite under mlruns/."""
    uri = flag or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return local_tracking_uri()
    scheme = _scheme(uri)
    if scheme not in TRACKING_SCHEMES:
        raise InvalidArgument(
            f"unsupported tracking URI {redact(uri)!r}; valid schemes: {', '.join(TRACKING_SCHEMES)} "
            "(MLflow 3's file store is not used)"
        )
    return with_installed_driver(uri)


def local_artifact_location(tracking_uri: str, experiment_name: str) -> str | None:
    """Artifact folder for a new experiment in an embedded database store; None lets a server decide."""
    if _scheme(tracking_uri) in ("http", "https"):
        return None
    return (local_artifact_root() / artifact_folder_name(experiment_name)).as_uri()


def local_artifact_root() -> Path:
    """Where the embedded store keeps each experiment's artifact folder: mlruns/artifacts."""
    return mlruns_dir() / "artifacts"


def artifact_folder_name(experiment_name: str) -> str:
    """The experiment's folder name under the artifact root (characters a file name cannot hold become '_')."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment_name)


def default_storage_url() -> str:
    """The embedded Optuna storage: a journal file under mlruns/."""
    return f"journal:///{mlruns_dir() / 'optuna.journal'}"


def resolve_storage_url(flag: str | None = None) -> str:
    """The Optuna storage URL: --storage, else $TRAINLIB_OPTUNA_STORAGE, else the journal file under mlruns/."""
    url = flag or os.environ.get("TRAINLIB_OPTUNA_STORAGE") or default_storage_url()
    scheme = _scheme(url)
    if scheme not in STORAGE_SCHEMES:
        raise InvalidArgument(
            f"unsupported storage URL {redact(url)!r}; valid schemes: {', '.join(STORAGE_SCHEMES)} "
            "(journal:///path/to/file for a journal file)"
        )
    if scheme == "journal" and not urlsplit(url).path.strip("/"):
        raise InvalidArgument(f"storage URL {url!r} names no file; use journal:///path/to/file")
    return with_installed_driver(url)


def sqlite_path(url: str) -> Path | None:
    """The file of a sqlite URL (sqlite:///relative or sqlite:////absolute), None for any other URL."""
    if not is_sqlite(url):
        return None
    path = urlsplit(url).path
    return Path(path[1:] if path.startswith("/") else path)


def is_sqlite(url: str) -> bool:
    """True for sqlite URLs, which are not safe with concurrent writers."""
    return _scheme(url) == "sqlite"


def _scheme(url: str) -> str:
    return urlsplit(url).scheme.split("+", 1)[0].lower()


def redact(url: str) -> str:
    """``url`` with any password replaced by '***', safe to log, tag or print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def is_database_server(url: str) -> bool:
    """True for PostgreSQL and MySQL URLs: shared databases that workers on several machines can use."""
    return _scheme(url) in ("postgresql", "mysql")


def with_installed_driver(url: str) -> str:
    """``url`` naming psycopg2 where a bare postgresql:// would ask SQLAlchemy (2.1+) for psycopg 3, not installed."""
    bare_postgresql = urlsplit(url).scheme == "postgresql"
    if bare_postgresql and importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2"):
        return "postgresql+psycopg2" + url.removeprefix("postgresql")
    return url


def scrub(text: str, url: str) -> str:
    """``text`` with ``url``'s password (plain or percent-encoded) replaced by '***'."""
    password = urlsplit(url).password
    if not password:
        return text
    for secret in {password, quote(password, safe=""), unquote(password)}:
        text = text.replace(secret, "***")
    return text


# ---- the tracking server: one home for the defaults `make server` uses ----


def default_artifacts_destination() -> Path:
    """Where a local tracking server keeps proxied artifacts: mlruns/artifacts, beside the embedded store's."""
    return local_artifact_root()


def mlflow_server_command(
    host: str = "127.0.0.1",
    port: int = 5000,
    backend_store_uri: str | None = None,
    artifacts_destination: str | None = None,
    extra_args: tuple[str, ...] = (),
) -> list[str]:
    """The `mlflow server --serve-artifacts` command line; by default it serves the local store under mlruns/."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        host,
        "--port",
        str(port),
        "--backend-store-uri",
        with_installed_driver(backend_store_uri or local_tracking_uri()),
        "--serve-artifacts",
        "--artifacts-destination",
        artifacts_destination or str(default_artifacts_destination()),
        *extra_args,
    ]
