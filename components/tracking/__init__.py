"""MLflow tracking: the only package in medtune that imports ``mlflow`` (STYLE.md rule 1)."""

from components.tracking.runs import (
    TrackingSession,
    flatten_params,
    redact,
)

__all__ = ["TrackingSession", "flatten_params", "redact"]
