"""An untrained model of one of a pipeline's candidates, built from its config: the
estimator, the encoder of its inputs and the drift detectors that watch it."""

from __future__ import annotations

from tidemill.config.models import ModelSpec
from tidemill.config.pipeline import PipelineConfig
from tidemill.tasks.drift.detectors import Adwin, PageHinkley
from tidemill.tasks.drift.shift import FeatureShift
from tidemill.tasks.features.aggregate import aggregate_feature_names
from tidemill.tasks.features.encode import FeatureEncoder
from tidemill.tasks.features.lags import lag_feature_names
from tidemill.tasks.learn.estimators import make_estimator
from tidemill.tasks.learn.state import ModelState

PERIODS = {"hour": 24, "weekday": 7, "month": 12}
"""Period of each time feature, for its cyclic (sin/cos) encoding."""


def numeric_inputs(config: PipelineConfig) -> list[str]:
    """Numeric model inputs: numeric features, then aggregate and lag features."""
    assert config.features is not None
    numeric = [f for f in config.features if f not in config.categorical]
    numeric += [n for spec in config.aggregates for n in aggregate_feature_names(spec)]
    numeric += [n for lag in config.lags for n in lag_feature_names(lag.name, lag.n)]
    return numeric


def fresh_model(config: PipelineConfig, spec: ModelSpec | None = None) -> ModelState:
    """An untrained model state of candidate `spec` (default: the config's model)."""
    spec = spec or config.model
    numeric = numeric_inputs(config)
    encoder = FeatureEncoder(
        numeric=numeric,
        categorical=list(config.categorical),
        max_categories=config.max_categories,
        cyclic={f"event_{n}": PERIODS[n] for n in config.time_features},
        hash_buckets=config.hash_buckets if config.categorical_encoding == "hash" else 0,
    )
    estimator = make_estimator(spec.estimator, dict(spec.params), config.task)
    classes = config.label_classes if config.task == "classification" else None
    detectors: dict[str, type[Adwin] | type[PageHinkley]] = {
        "adwin": Adwin,
        "page_hinkley": PageHinkley,
    }
    drift = config.drift
    return ModelState(
        estimator=estimator,
        encoder=encoder,
        task=config.task,
        classes=classes,
        candidate=spec.name,
        detector=detectors[drift.detector]() if drift.detector in detectors else None,
        shift=FeatureShift(
            features=numeric,
            reference_rows=drift.psi_reference_rows,
            window_rows=drift.psi_window_rows,
        )
        if numeric
        else None,
    )
