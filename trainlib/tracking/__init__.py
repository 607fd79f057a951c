"""MLflow tracking for sweeps: a Tracker protocol, the MLflow tracker, and the one that records nothing.

The engine never sees MLflow: a trial's log is an engine callback (``log_epoch``). This package imports
neither Optuna nor the sweep; what it needs of a study (where the parent run is published) comes in through
the ParentRunSlot protocol.
"""

from trainlib.tracking.client import PatientClient, configure_mlflow, ensure_experiment, environment_tags
from trainlib.tracking.protocol import NullTracker, ParentRunSlot, RunNote, Tracker, TrialLog, TrialOutcome
from trainlib.tracking.tracker import MlflowTracker

__all__ = [
    "MlflowTracker",
    "NullTracker",
    "ParentRunSlot",
    "PatientClient",
    "RunNote",
    "Tracker",
    "TrialLog",
    "TrialOutcome",
    "configure_mlflow",
    "ensure_experiment",
    "environment_tags",
]
