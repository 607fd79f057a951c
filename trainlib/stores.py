"""Where results go: the one place that resolves the MLflow tracking URI and the Optuna storage.

Embedded default: everything under ./mlruns (MLflow in sqlite, Optuna in a journal file that is
safe for several local worker processes). Overrides: a flag, then an environment variable.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from trainlib.errors import InvalidArgument

TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "http", "https")
STORAGE_SCHEMES = ("sqlite", "postgresql", "mysql", "journal")


def mlruns_dir() -> Path:
    """The local store folder: $TRAINLIB_MLRUNS_DIR, else ./mlruns."""
    return Path(os.environ.get("TRAINLIB_MLRUNS_DIR", "mlruns")).resolve()


def resolve_tracking_uri(flag: str | None = None) -> str:
    """The MLflow tracking URI: --tracking-uri, else $MLFLOW_TRACKING_URI, else sqlite under mlruns/."""
    uri = flag or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return f"sqlite:///{mlruns_dir() / 'mlflow.db'}"
    scheme = _scheme(uri)
    if scheme not in TRACKING_SCHEMES:
        raise InvalidArgument(
            f"unsupported tracking URI {redact(uri)!r}; valid schemes: {', '.join(TRACKING_SCHEMES)} "
            "(MLflow 3's file store is not used)"
        )
    return uri


def local_artifact_location(tracking_uri: str, experiment_name: str) -> str | None:
    """Artifact folder for a new experiment in an embedded database store; None lets a server decide."""
    if _scheme(tracking_uri) in ("http", "https"):
        return None
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment_name)
    return (mlruns_dir() / "artifacts" / safe_name).as_uri()


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
    return url


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
