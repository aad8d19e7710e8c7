"""The synthetic card payments: seeded, consistent people, valid cards, a fraud drift."""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import pytest

from tidemill.tasks.synthetic.flights import landing_rows
from tidemill.tasks.synthetic.transactions import (
    EVENT_COLUMNS,
    luhn_check_digit,
    luhn_valid,
    transaction_events,
)


@pytest.fixture(scope="module")
def events() -> pl.DataFrame:
    return transaction_events(days=30, per_day=1000)


def test_the_same_seed_gives_the_same_stream_and_another_seed_another() -> None:
    small = {"days": 2, "per_day": 200, "n_customers": 50, "n_merchants": 20}
    assert transaction_events(**small).equals(transaction_events(**small))
    assert not transaction_events(**small).equals(transaction_events(**small, seed=1))


def test_events_are_ordered_unique_and_shaped_like_the_landing_files(
    events: pl.DataFrame,
) -> None:
    assert events.columns == list(EVENT_COLUMNS) and events.height == 30_000
    assert events["id"].to_list() == list(range(1, 30_001))
    assert events["ts"].is_sorted() and events["ts"].dtype == pl.Datetime("us", "UTC")
    assert events["ts"].max() - events["ts"].min() < timedelta(days=30)  # type: ignore[operator]
    assert set(events["fraud"].unique()) == {"0", "1"}
    assert set(events["channel"].unique()) == {"online", "in_store"}
    assert events["amount"].min() > 0 and events["distance_km"].min() >= 0  # type: ignore[operator]
    first = landing_rows(events.head(1), EVENT_COLUMNS).row(0, named=True)
    assert first["ts"].endswith("Z") and first["name"] and "@" in first["email"]


def test_each_customer_has_one_name_one_email_and_one_luhn_valid_card(
    events: pl.DataFrame,
) -> None:
    people = events.select("name", "email", "card_number").unique()
    assert people["email"].n_unique() == people.height == people["card_number"].n_unique()
    cards = people["card_number"].to_list()
    assert all(len(c) == 16 and luhn_valid(c) for c in cards)
    assert not luhn_valid(cards[0][:-1] + str((int(cards[0][-1]) + 1) % 10))
    assert luhn_check_digit("7992739871") == "3"  # the textbook example
    assert (
        people["email"].str.contains(r"@(example\.(com|org|net)|mail\.example|post\.test)$").all()
    )


def test_merchant_names_never_carry_a_customer_name(events: pl.DataFrame) -> None:
    words = set(" ".join(events["name"].unique().to_list()).split())
    merchants = set(" ".join(events["merchant"].unique().to_list()).split())
    assert not words & merchants


def test_the_fraud_pattern_changes_at_drift_at(events: pl.DataFrame) -> None:
    start = events["ts"].min()
    cut = start + timedelta(days=12)  # type: ignore[operator]
    fraud = events.filter(pl.col("fraud") == "1").with_columns(
        late=pl.col("ts") >= cut, online=pl.col("channel") == "online"
    )
    share = fraud.height / events.height
    assert 0.02 < share < 0.04
    before = fraud.filter(~pl.col("late") & (pl.col("ts") < cut - timedelta(days=1)))
    after = fraud.filter(pl.col("late") & (pl.col("ts") > cut + timedelta(days=1)))
    assert before["amount"].median() > 200 > 10 > after["amount"].median()  # type: ignore[operator]
    assert before["distance_km"].median() > 300 > 50 > after["distance_km"].median()  # type: ignore[operator]
    assert before["online"].mean() < 0.5 < 0.9 < after["online"].mean()  # type: ignore[operator]
    legit = events.filter(pl.col("fraud") == "0")
    assert legit["amount"].median() < 100 and legit["distance_km"].median() < 20  # type: ignore[operator]
