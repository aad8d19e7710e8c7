"""Prequential metrics: how well the model scored a batch it had not yet learned."""

from __future__ import annotations

import math

import numpy as np

from tidemill.tasks.learn.state import Scores


def prequential_metrics(task: str, scores: Scores, y: np.ndarray) -> dict[str, float]:
    """Metric name -> value over the labelled rows (`y`, aligned with `scores`).

    Classification: accuracy, and log_loss when probabilities exist (clipped at 1e-15,
    natural log). Regression: mae, rmse. Clustering: inertia, the mean squared distance of
    the rows to their nearest centre (`y` is ignored but sets the row count). Empty input
    gives no metrics.
    """
    if y.size == 0:
        return {}
    if task == "clustering":
        return {"inertia": float(scores.scores.mean())}
    if task == "regression":
        error = scores.predictions.astype(np.float64) - y.astype(np.float64)
        return {"mae": float(np.abs(error).mean()), "rmse": float(math.sqrt((error**2).mean()))}
    truth = y.astype(str)
    metrics = {"accuracy": float((scores.predictions == truth).mean())}
    if scores.proba is not None and scores.labels is not None:
        index = {str(c): i for i, c in enumerate(scores.labels)}
        columns = np.array([index[t] for t in truth])
        p = np.clip(scores.proba[np.arange(truth.size), columns], 1e-15, 1.0)
        metrics["log_loss"] = float(-np.log(p).mean()) + 0.0  # never -0.0
    return metrics


LOWER_IS_BETTER = frozenset({"log_loss", "mae", "rmse", "inertia"})
DEFAULT_METRIC = {"classification": "accuracy", "regression": "mae", "clustering": "inertia"}


def row_errors(task: str, scores: Scores, y: np.ndarray) -> np.ndarray:
    """Per-row error stream the drift detectors watch: 1.0/0.0 for a wrong/right class,
    the absolute error for regression, the squared distance for clustering."""
    if task == "classification":
        return (scores.predictions != y.astype(str)).astype(np.float64)
    if task == "clustering":
        return scores.scores.astype(np.float64)
    return np.abs(scores.predictions.astype(np.float64) - y.astype(np.float64))
