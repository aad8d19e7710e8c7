from tidemill.tasks.judge.promotion import ScoreWindow, decide


def _windows(
    values: dict[str, list[float]], n: int = 100, rows: int = 500
) -> dict[str, ScoreWindow]:
    windows = {}
    for name, per_batch in values.items():
        window = ScoreWindow(rows=rows)
        for batch_id, value in enumerate(per_batch, start=1):
            window.add(batch_id, n, value)
        windows[name] = window
    return windows


def test_a_window_keeps_just_enough_batches_to_cover_its_rows() -> None:
    window = ScoreWindow(rows=250)
    for batch_id in range(1, 11):
        window.add(batch_id, 100, 0.5)
    assert [b[0] for b in window.batches] == [8, 9, 10] and window.total == 300


def test_a_challenger_clearly_better_on_the_same_rows_is_promoted_with_evidence() -> None:
    windows = _windows({"main": [0.70] * 10, "mlp": [0.75] * 10, "nb": [0.705] * 10})
    decision = decide("main", windows, metric="accuracy", min_rows=300, margin=0.01)
    assert decision is not None and decision.candidate == "mlp"
    assert decision.evidence["rows"] == 500 and decision.evidence["batches"] == [6, 7, 8, 9, 10]
    assert abs(decision.evidence["challenger_value"] - 0.75) < 1e-12  # type: ignore[operator]
    assert "over the same 500 rows" in decision.reason


def test_no_promotion_below_the_margin_or_the_minimum_rows() -> None:
    close = _windows({"main": [0.70] * 10, "nb": [0.705] * 10})
    assert decide("main", close, metric="accuracy", min_rows=300, margin=0.01) is None
    young = _windows({"main": [0.70] * 10, "mlp": [0.9] * 2})
    young["mlp"] = ScoreWindow(rows=500)
    young["mlp"].add(10, 100, 0.9)
    assert decide("main", young, metric="accuracy", min_rows=300, margin=0.01) is None


def test_lower_is_better_metrics_and_only_common_batches_count() -> None:
    windows = _windows({"main": [5.0] * 10, "sgd": [4.0] * 10})
    decision = decide("main", windows, metric="mae", min_rows=100, margin=0.5)
    assert decision is not None and decision.candidate == "sgd"
    # a fresh challenger is compared with the champion on ITS batches only
    windows["fresh"] = ScoreWindow(rows=500)
    for batch_id, (champion, fresh) in enumerate([(9.0, 3.0), (8.0, 3.5), (9.5, 3.2)], 11):
        windows["main"].add(batch_id, 100, champion)  # bad batches the newcomer shares
        windows["fresh"].add(batch_id, 100, fresh)
    decision = decide("main", windows, metric="mae", min_rows=100, margin=0.5)
    assert decision is not None and decision.candidate == "fresh"
    assert abs(decision.evidence["champion_value"] - 26.5 / 3) < 1e-9  # type: ignore[operator]
    assert decision.evidence["rows"] == 300


def test_a_lead_inside_the_noise_of_the_paired_batches_is_not_enough() -> None:
    noisy = _windows({"main": [0.70] * 6, "mlp": [0.78, 0.66, 0.78, 0.66, 0.78, 0.66]})
    # mean lead 0.02 >= margin, but the per-batch differences swing by 0.12
    assert decide("main", noisy, metric="accuracy", min_rows=300, margin=0.01) is None
    steady = _windows({"main": [0.70] * 6, "mlp": [0.73, 0.71, 0.73, 0.71, 0.73, 0.71]})
    decision = decide("main", steady, metric="accuracy", min_rows=300, margin=0.01)
    assert decision is not None and decision.evidence["standard_error"] > 0
