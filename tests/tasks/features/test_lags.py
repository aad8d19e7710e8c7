from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidemill.tasks.features.lags import lag_feature_names, lag_history, with_target_lags

T0 = datetime(2024, 1, 1)
HISTORY_SCHEMA = {"tail": pl.String, "event_at": pl.Datetime("us"), "value": pl.Float64}


def _t(hour: int) -> datetime:
    return T0 + timedelta(hours=hour)


def _rows(tail: list[str | None], hours: list[int], values: list[float | None]) -> pl.DataFrame:
    return pl.DataFrame(
        {"ts": [_t(h) for h in hours], "tail": tail, "_value": values},
        schema={"ts": pl.Datetime("us"), "tail": pl.String, "_value": pl.Float64},
    )


def _history(tail: list[str | None], hours: list[int], values: list[float]) -> pl.DataFrame:
    return pl.DataFrame(
        {"tail": tail, "event_at": [_t(h) for h in hours], "value": values}, schema=HISTORY_SCHEMA
    )


NO_HISTORY = pl.DataFrame(schema=HISTORY_SCHEMA)


def _lags(
    rows: pl.DataFrame, history: pl.DataFrame = NO_HISTORY, *, n: int
) -> list[tuple[float | None, ...]]:
    out = with_target_lags(rows, history, event_time="ts", by=["tail"], n=n, name="late")
    return out.select(lag_feature_names("late", n)).rows()


def test_feature_names_run_from_most_recent() -> None:
    assert lag_feature_names("late", 3) == ["late_lag1", "late_lag2", "late_lag3"]


def test_rows_keep_their_order_and_columns_and_gain_float_lags() -> None:
    rows = _rows(["A", "B", "A"], [2, 1, 0], [1.0, 0.0, 0.0])
    out = with_target_lags(rows, NO_HISTORY, event_time="ts", by=["tail"], n=2, name="late")
    assert out.columns == ["ts", "tail", "_value", "late_lag1", "late_lag2"]
    assert out.select(rows.columns).equals(rows)
    assert out.schema["late_lag1"] == pl.Float64


def test_in_batch_lags_with_one_and_three() -> None:
    rows = _rows(["A", "A", "B", "A", "A", "B"], [0, 1, 1, 2, 3, 4], [1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    assert _lags(rows, n=1) == [(None,), (1.0,), (None,), (0.0,), (1.0,), (1.0,)]
    assert _lags(rows, n=3) == [
        (None, None, None),
        (1.0, None, None),
        (None, None, None),
        (0.0, 1.0, None),
        (1.0, 0.0, 1.0),
        (1.0, None, None),
    ]


def test_lags_come_from_history_when_the_batch_has_none_earlier() -> None:
    history = _history(["A", "A", "B"], [-3, -1, -2], [1.0, 0.0, 1.0])
    rows = _rows(["A", "B", "C"], [5, 5, 5], [None, None, None])
    assert _lags(rows, history, n=3) == [(0.0, 1.0, None), (1.0, None, None), (None, None, None)]


def test_history_and_earlier_batch_rows_combine_most_recent_first() -> None:
    history = _history(["A", "A"], [-2, -1], [0.0, 1.0])
    rows = _rows(["A", "A"], [0, 1], [0.5, 0.25])
    assert _lags(rows, history, n=3) == [(1.0, 0.0, None), (0.5, 1.0, 0.0)]


def test_rows_sharing_an_event_time_never_see_each_others_label() -> None:
    rows = _rows(["A", "A", "A"], [0, 1, 1], [1.0, 0.0, 1.0])
    assert _lags(rows, n=2) == [(None, None), (1.0, None), (1.0, None)]


def test_entries_sharing_an_event_time_are_ordered_by_value() -> None:
    history = _history(["A", "A", "A"], [-1, -1, -2], [1.0, 0.0, 0.5])
    rows = _rows(["A"], [0], [None])
    assert _lags(rows, history, n=3) == [(1.0, 0.0, 0.5)]
    reordered = history.reverse()
    assert _lags(rows, reordered, n=3) == [(1.0, 0.0, 0.5)]


def test_a_late_row_never_reads_history_later_than_itself() -> None:
    history = _history(["A", "A"], [1, 10], [0.0, 1.0])
    rows = _rows(["A", "A"], [5, 11], [None, None])
    assert _lags(rows, history, n=2) == [(0.0, None), (1.0, 0.0)]


def test_unlabelled_rows_get_lags_but_give_none() -> None:
    rows = _rows(["A", "A", "A", "A"], [0, 1, 2, 3], [1.0, None, None, 0.0])
    assert _lags(rows, n=2) == [(None, None), (1.0, None), (1.0, None), (1.0, None)]


def test_a_row_without_an_event_time_gets_no_lags() -> None:
    rows = _rows(["A", "A"], [0, 1], [1.0, None]).with_columns(
        pl.when(pl.int_range(pl.len()) == 1).then(None).otherwise(pl.col("ts")).alias("ts")
    )
    assert _lags(rows, n=1) == [(None,), (None,)]


def test_series_span_several_columns_and_null_is_a_series_of_its_own() -> None:
    rows = pl.DataFrame(
        {
            "ts": [_t(h) for h in [0, 0, 0, 1, 1, 1, 1]],
            "carrier": ["AA", "AA", None, "AA", "AA", None, "UA"],
            "tail": ["N1", "N2", "N1", "N1", "N2", "N1", "N1"],
            "_value": [1.0, 0.0, 0.5, None, None, None, None],
        }
    )
    history = NO_HISTORY.with_columns(carrier=pl.lit(None, pl.String))
    out = with_target_lags(rows, history, event_time="ts", by=["carrier", "tail"], n=1, name="x")
    assert out["x_lag1"].to_list() == [None, None, None, 1.0, 0.0, 0.5, None]


def test_history_of_other_dtypes_is_read_as_the_batch_types() -> None:
    history = pl.DataFrame({"tail": [None], "event_at": [T0.date()], "value": [1]})
    rows = _rows([None], [3], [None])
    assert _lags(rows, history, n=1) == [(1.0,)]


def test_new_history_keeps_the_latest_labelled_entries_of_the_batch_series() -> None:
    history = _history(["A", "A", "B", "Z"], [-2, -1, -1, -1], [0.0, 1.0, 1.0, 1.0])
    rows = _rows(["A", "A", "B", None], [0, 1, 0, 0], [0.5, None, None, 0.25])
    new = lag_history(history, rows, event_time="ts", by=["tail"], n=2)
    assert new.rows() == [
        (None, _t(0), 0.25),
        ("A", _t(-1), 1.0),
        ("A", _t(0), 0.5),
        ("B", _t(-1), 1.0),
    ]


def test_new_history_breaks_ties_at_the_cut_as_the_lags_do() -> None:
    rows = _rows(["A", "A", "A"], [0, 0, 0], [1.0, 0.0, 0.5])
    new = lag_history(NO_HISTORY, rows, event_time="ts", by=["tail"], n=2)
    assert new["value"].to_list() == [0.5, 1.0]
    later = _rows(["A"], [1], [None])
    assert _lags(later, new, n=2) == _lags(pl.concat([rows, later]), n=2)[-1:]


@pytest.mark.parametrize(("by", "n"), [([], 1), (["tail"], 0)])
def test_bad_arguments_say_what_would_be_right(by: list[str], n: int) -> None:
    rows = _rows(["A"], [0], [1.0])
    with pytest.raises(ValueError, match=r"at least one series|n >= 1"):
        with_target_lags(rows, NO_HISTORY, event_time="ts", by=by, n=n, name="x")
    with pytest.raises(ValueError, match=r"at least one series|n >= 1"):
        lag_history(NO_HISTORY, rows, event_time="ts", by=by, n=n)


# --- properties against a brute-force reference ----------------------------------------

Key = tuple[str | None, int | None]
BY = ["a", "b"]
STREAM_SCHEMA = {"ts": pl.Datetime("us"), "a": pl.String, "b": pl.Int64, "_value": pl.Float64}
STORED_SCHEMA = {"a": pl.String, "b": pl.Int64, "event_at": pl.Datetime("us"), "value": pl.Float64}

keys = st.tuples(st.sampled_from(["x", "y", None]), st.sampled_from([1, None]))
stream_rows = st.lists(
    st.tuples(keys, st.integers(0, 6), st.sampled_from([None, 0.0, 1.0, 2.5])), max_size=25
)
stored_entries = st.lists(
    st.tuples(keys, st.integers(-3, 8), st.sampled_from([0.0, 1.0, 2.5])), max_size=8
)


def _stream(rows: list[tuple[Key, int, float | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        [(_t(h), a, b, v) for (a, b), h, v in rows], schema=STREAM_SCHEMA, orient="row"
    )


def _stored(entries: list[tuple[Key, int, float]]) -> pl.DataFrame:
    return pl.DataFrame(
        [(a, b, _t(h), v) for (a, b), h, v in entries], schema=STORED_SCHEMA, orient="row"
    )


def _reference_lags(
    rows: list[tuple[Key, int, float | None]], stored: list[tuple[Key, int, float]], n: int
) -> list[tuple[float | None, ...]]:
    """For each row, a plain loop over every entry: the n latest labelled ones of the same
    series strictly before the row, ties in time broken by value."""
    entries = stored + [(k, h, v) for k, h, v in rows if v is not None]
    out = []
    for key, hour, _ in rows:
        earlier = sorted((h, v) for k, h, v in entries if k == key and h < hour)
        latest = [v for _, v in reversed(earlier[-n:])]
        out.append(tuple(latest + [None] * (n - len(latest))))
    return out


@settings(max_examples=150, deadline=None)
@given(rows=stream_rows, stored=stored_entries, n=st.integers(1, 3))
def test_lags_match_a_brute_force_reference_so_nothing_leaks(
    rows: list[tuple[Key, int, float | None]], stored: list[tuple[Key, int, float]], n: int
) -> None:
    out = with_target_lags(_stream(rows), _stored(stored), event_time="ts", by=BY, n=n, name="y")
    assert out.select(lag_feature_names("y", n)).rows() == _reference_lags(rows, stored, n)


def _upsert(stored: pl.DataFrame, new: pl.DataFrame) -> pl.DataFrame:
    """What the warehouse does with `lag_history`: replace the series it returns."""
    kept = stored.join(new.select(BY).unique(), on=BY, how="anti", nulls_equal=True)
    return pl.concat([kept, new])


@settings(max_examples=150, deadline=None)
@given(rows=stream_rows, cuts=st.sets(st.integers(1, 24)), n=st.integers(1, 3))
def test_consecutive_batches_carrying_history_match_one_batch(
    rows: list[tuple[Key, int, float | None]], cuts: set[int], n: int
) -> None:
    stream = _stream(sorted(rows, key=lambda r: r[1]))
    times = stream["ts"].to_list()
    # A batch starts strictly after the previous one ends (see the module docstring).
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(times) and times[c - 1] < times[c])]
    batches = [
        stream[start:end] for start, end in zip(bounds, [*bounds[1:], len(times)], strict=True)
    ]
    names = lag_feature_names("y", n)

    stored = _stored([])
    parts = []
    for batch in batches:
        parts.append(
            with_target_lags(batch, stored, event_time="ts", by=BY, n=n, name="y").select(names)
        )
        stored = _upsert(stored, lag_history(stored, batch, event_time="ts", by=BY, n=n))

    whole = with_target_lags(stream, _stored([]), event_time="ts", by=BY, n=n, name="y")
    assert pl.concat(parts).rows() == whole.select(names).rows()
