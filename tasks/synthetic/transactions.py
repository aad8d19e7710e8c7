"""A synthetic stream of card payments with fraud labels: the `transactions` pipeline's data.

Seeded and pure (numpy + Polars): the same arguments give the same frame on every
machine, so the replayer can stop and resume by event time like it does for flights.
Everything personal in it is made up: names from short lists, e-mail addresses at
reserved example domains (RFC 2606), card numbers with a valid Luhn check digit that
belong to no one.

The fraud changes its pattern partway (`drift_at`), so online models see a real drift:

- before: cloned cards used far from home — large amounts at electronics, jewelry and
  travel merchants, mostly at night and in store;
- after: card testing — tiny online amounts at digital-goods and gift-card merchants,
  near home, at any hour.

Fraud concentrates on the cards compromised that week, so a customer's recent fraud
rate (an aggregate per customer) carries signal, as it would in practice.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl

EVENT_COLUMNS = (
    "id",
    "ts",
    "name",
    "email",
    "card_number",
    "merchant",
    "category",
    "channel",
    "amount",
    "distance_km",
    "fraud",
)
"""Columns of an event frame and of every transactions landing CSV, in this order."""

FIRST_NAMES = (
    "Ada", "Alan", "Amara", "Anika", "Arjun", "Beatriz", "Bjorn", "Carmen", "Chen", "Dalia",
    "Dmitri", "Elif", "Emeka", "Esther", "Farid", "Freya", "Gustavo", "Hana", "Ines", "Ivan",
    "Jonas", "Kalani", "Kenji", "Leila", "Lucia", "Malik", "Mateo", "Mei", "Nadia", "Niamh",
    "Olga", "Omar", "Priya", "Quentin", "Rafael", "Rosa", "Sami", "Sofia", "Tariq", "Thea",
    "Uma", "Viktor", "Wanjiru", "Xavier", "Yara", "Yusuf", "Zainab", "Zoltan",
)  # fmt: skip
LAST_NAMES = (
    "Abara", "Bergstrom", "Castillo", "Dubois", "Eriksen", "Fernandes", "Gallagher", "Haddad",
    "Ivanova", "Jaramillo", "Kowalski", "Lindqvist", "Mbeki", "Nakamura", "Okafor", "Petrov",
    "Quispe", "Rossi", "Sandoval", "Tanaka", "Uchenna", "Varga", "Whitfield", "Xiong",
    "Yilmaz", "Zielinski", "Achterberg", "Brennan", "Costa", "Delacroix", "Esposito", "Fischer",
)  # fmt: skip
EMAIL_DOMAINS = ("example.com", "example.org", "example.net", "mail.example", "post.test")

CATEGORIES = (
    # name, share of legitimate spending, log-amount mean and spread, online share
    ("grocery", 0.24, 3.6, 0.5, 0.10),
    ("fuel", 0.12, 3.8, 0.3, 0.0),
    ("restaurant", 0.16, 3.3, 0.5, 0.15),
    ("pharmacy", 0.07, 3.0, 0.6, 0.10),
    ("clothing", 0.10, 4.1, 0.6, 0.45),
    ("electronics", 0.06, 5.2, 0.8, 0.50),
    ("travel", 0.04, 5.9, 0.7, 0.80),
    ("jewelry", 0.02, 5.6, 0.9, 0.30),
    ("digital_goods", 0.14, 2.4, 0.8, 1.0),
    ("gift_cards", 0.05, 3.9, 0.5, 0.60),
)
MERCHANT_WORDS = (
    "Northwind", "Bluebell", "Riverside", "Summit", "Oakridge", "Harbor", "Granite",
    "Silverline", "Redwood", "Lakeside", "Beacon", "Copperleaf", "Meadow", "Ironbridge",
)  # fmt: skip
MERCHANT_NOUNS = {
    "grocery": "Grocers",
    "fuel": "Fuel",
    "restaurant": "Kitchen",
    "pharmacy": "Pharmacy",
    "clothing": "Outfitters",
    "electronics": "Electronics",
    "travel": "Travel",
    "jewelry": "Jewellers",
    "digital_goods": "Digital",
    "gift_cards": "Gift Cards",
}
HOURS_LEGIT = np.array(
    [1, 0.5, 0.3, 0.3, 0.4, 1, 2, 4, 5, 6, 6, 7, 8, 7, 6, 6, 6, 7, 8, 7, 5, 4, 3, 2], dtype=float
)
START = datetime(2024, 3, 1, tzinfo=UTC)


def luhn_check_digit(digits: str) -> str:
    """The digit that makes `digits` + it pass the Luhn check."""
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    """True when `number` (digits only) passes the Luhn check."""
    return number.isdigit() and luhn_check_digit(number[:-1]) == number[-1]


def customers(n: int, rng: np.random.Generator) -> pl.DataFrame:
    """`n` made-up customers: name, unique e-mail and unique Luhn-valid 16-digit card
    number (Visa- or Mastercard-like prefix), and how often each one pays (weight)."""
    first = rng.choice(FIRST_NAMES, n)
    last = rng.choice(LAST_NAMES, n)
    domain = rng.choice(EMAIL_DOMAINS, n)
    cards: list[str] = []
    seen: set[str] = set()
    while len(cards) < n:
        prefix = "4" if rng.random() < 0.6 else f"5{rng.integers(1, 6)}"
        body = prefix + "".join(map(str, rng.integers(0, 10, 15 - len(prefix))))
        number = body + luhn_check_digit(body)
        if number not in seen:
            seen.add(number)
            cards.append(number)
    return pl.DataFrame(
        {
            "name": [f"{f} {la}" for f, la in zip(first, last, strict=True)],
            "email": [
                f"{f.lower()}.{la.lower()}{i}@{d}"
                for i, (f, la, d) in enumerate(zip(first, last, domain, strict=True))
            ],
            "card_number": cards,
            "weight": rng.gamma(2.0, 1.0, n),
        }
    )


def merchants(n: int, rng: np.random.Generator) -> pl.DataFrame:
    """`n` merchants, at least one per category, named `<Word> <Category noun> <number>`."""
    names = [c[0] for c in CATEGORIES]
    shares = np.array([c[1] for c in CATEGORIES])
    category = names + list(rng.choice(names, n - len(names), p=shares / shares.sum()))
    words = rng.choice(MERCHANT_WORDS, n)
    return pl.DataFrame(
        {
            "merchant": [
                f"{w} {MERCHANT_NOUNS[c]} {i + 1}"
                for i, (w, c) in enumerate(zip(words, category, strict=True))
            ],
            "category": category,
        }
    )


def transaction_events(
    *,
    days: int = 90,
    per_day: int = 1000,
    n_customers: int = 2000,
    n_merchants: int = 150,
    fraud_rate: float = 0.03,
    drift_at: float = 0.4,
    start: datetime = START,
    seed: int = 20240301,
) -> pl.DataFrame:
    """Return `days * per_day` card payments from `start`, ordered by `(ts, id)`.

    Columns are :data:`EVENT_COLUMNS`: `id` (Int64, 1..n in time order), `ts`
    (Datetime UTC), the payer's `name`, `email` and `card_number` (text), `merchant`,
    `category`, `channel` (`online` | `in_store`), `amount` (2 decimals), `distance_km`
    from the payer's home, and `fraud` ("1" | "0"). A share `fraud_rate` of the rows is
    fraud; its pattern switches at `drift_at` (a fraction of the time range; see the
    module docstring).
    """
    if not 0 <= drift_at <= 1 or not 0 <= fraud_rate < 1:
        raise ValueError("drift_at must be in [0, 1] and fraud_rate in [0, 1)")
    rng = np.random.default_rng(seed)
    people = customers(n_customers, rng)
    shops = merchants(n_merchants, rng)
    n = days * per_day
    cat_names = [c[0] for c in CATEGORIES]
    cat_index = {c: i for i, c in enumerate(cat_names)}
    shop_cat = np.array([cat_index[c] for c in shops["category"]])
    by_cat = [np.flatnonzero(shop_cat == i) for i in range(len(CATEGORIES))]

    seconds = _times(rng, n, days, HOURS_LEGIT)
    weight = people["weight"].to_numpy()
    payer = rng.choice(n_customers, n, p=weight / weight.sum())
    shares = np.array([c[1] for c in CATEGORIES])
    cat = rng.choice(len(CATEGORIES), n, p=shares / shares.sum())
    mu = np.array([c[2] for c in CATEGORIES])[cat]
    sigma = np.array([c[3] for c in CATEGORIES])[cat]
    amount = rng.lognormal(mu, sigma)
    online = rng.random(n) < np.array([c[4] for c in CATEGORIES])[cat]
    distance = np.where(
        rng.random(n) < 0.03, rng.uniform(300, 3000, n), rng.exponential(8.0, n)
    )  # a few legitimate payments on trips far from home

    fraud = rng.random(n) < fraud_rate
    fraud_rows = np.flatnonzero(fraud)
    late = seconds[fraud_rows] >= drift_at * days * 86400
    _cloned_cards(rng, fraud_rows[~late], seconds, cat, amount, online, distance, cat_index)
    _card_testing(rng, fraud_rows[late], seconds, cat, amount, online, distance, cat_index)
    payer[fraud_rows] = _victims(rng, seconds[fraud_rows], n_customers)

    shop = np.empty(n, dtype=np.int64)
    for i, choices in enumerate(by_cat):
        rows = np.flatnonzero(cat == i)
        shop[rows] = rng.choice(choices, rows.size)
    order = np.argsort(seconds, kind="stable")
    epoch_us = (int(start.timestamp()) + seconds[order].astype(np.int64)) * 1_000_000
    return pl.DataFrame(
        {
            "id": np.arange(1, n + 1, dtype=np.int64),
            "ts": pl.Series(epoch_us).cast(pl.Datetime("us", "UTC")),
            "name": people["name"].to_numpy()[payer[order]],
            "email": people["email"].to_numpy()[payer[order]],
            "card_number": people["card_number"].to_numpy()[payer[order]],
            "merchant": shops["merchant"].to_numpy()[shop[order]],
            "category": np.array(cat_names)[cat[order]],
            "channel": np.where(online[order], "online", "in_store"),
            "amount": np.round(amount[order], 2),
            "distance_km": np.round(distance[order], 1),
            "fraud": np.where(fraud[order], "1", "0"),
        }
    ).select(EVENT_COLUMNS)


def _times(rng: np.random.Generator, n: int, days: int, hours: np.ndarray) -> np.ndarray:
    """Seconds from the start: a uniform day, an hour from the `hours` profile, a second
    within the hour."""
    day = rng.integers(0, days, n)
    hour = rng.choice(24, n, p=hours / hours.sum())
    return day * 86400.0 + hour * 3600.0 + rng.integers(0, 3600, n)


def _cloned_cards(
    rng: np.random.Generator,
    rows: np.ndarray,
    seconds: np.ndarray,
    cat: np.ndarray,
    amount: np.ndarray,
    online: np.ndarray,
    distance: np.ndarray,
    cat_index: dict[str, int],
) -> None:
    """The early fraud: big amounts, expensive categories, far away, at night, in store."""
    k = rows.size
    targets = [cat_index[c] for c in ("electronics", "jewelry", "travel")]
    cat[rows] = np.where(rng.random(k) < 0.8, rng.choice(targets, k), cat[rows])
    amount[rows] = rng.lognormal(6.3, 0.6, k)
    online[rows] = rng.random(k) < 0.35
    distance[rows] = rng.uniform(300, 6000, k)
    night = rng.random(k) < 0.7
    day = np.floor(seconds[rows] / 86400) * 86400
    seconds[rows] = np.where(night, day + rng.integers(0, 5 * 3600, k), seconds[rows])


def _card_testing(
    rng: np.random.Generator,
    rows: np.ndarray,
    seconds: np.ndarray,
    cat: np.ndarray,
    amount: np.ndarray,
    online: np.ndarray,
    distance: np.ndarray,
    cat_index: dict[str, int],
) -> None:
    """The late fraud: tiny online amounts at digital goods and gift cards, near home,
    at any hour."""
    k = rows.size
    targets = [cat_index[c] for c in ("digital_goods", "gift_cards")]
    cat[rows] = np.where(rng.random(k) < 0.85, rng.choice(targets, k), cat[rows])
    amount[rows] = np.where(
        rng.random(k) < 0.75, rng.uniform(0.5, 5.0, k), rng.lognormal(3.9, 0.5, k)
    )
    online[rows] = rng.random(k) < 0.95
    distance[rows] = rng.exponential(8.0, k)
    day = np.floor(seconds[rows] / 86400) * 86400
    seconds[rows] = day + rng.integers(0, 86400, k)


def _victims(rng: np.random.Generator, seconds: np.ndarray, n_customers: int) -> np.ndarray:
    """Whose card each fraud row uses: one of the 25 cards compromised in its week."""
    week = (seconds // (7 * 86400)).astype(np.int64)
    size = min(25, n_customers)
    pools = {w: rng.choice(n_customers, size, replace=False) for w in np.unique(week)}
    return np.array([rng.choice(pools[w]) for w in week], dtype=np.int64)
