"""Personal fields are protected in their columns, in the raw text and in reject reasons."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidemill.config.load import parse_config
from tidemill.config.pipeline import PipelineConfig
from tidemill.tasks.records.csv_text import parse_csv
from tidemill.tasks.records.lines import MAX_LINE_BYTES
from tidemill.tasks.records.ndjson import parse_ndjson
from tidemill.tasks.records.parquet import parse_parquet
from tidemill.tasks.records.pii import (
    masked_last4,
    protected_header,
    protected_records,
    pseudonym,
    shape_masked,
    subject_value,
)

KEY = b"k" * 32
RULES = {"email": "hash", "card_number": "mask_last4", "name": "drop"}
HEADER = ["id", "ts", "name", "email", "card_number", "amount", "fraud"]
DECLARED = ["id", "ts", "email", "amount", "fraud"]


def _csv(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerows([HEADER, *rows])
    return out.getvalue().encode()


def _protect_csv(data: bytes) -> pl.DataFrame:
    header, records = parse_csv(data, DECLARED)
    return protected_records(records, RULES, KEY, raw_format="csv", header=header)  # type: ignore[arg-type]


def _everything(frame: pl.DataFrame) -> str:
    return "\n".join(str(v) for column in frame.columns for v in frame[column].to_list())


def test_a_pseudonym_is_a_keyed_hmac_truncated_to_32_hex_characters() -> None:
    expected = hmac.new(KEY, b"ada@example.com", hashlib.sha256).hexdigest()[:32]
    assert pseudonym(KEY, "ada@example.com") == expected
    assert pseudonym(KEY, "  ada@example.com ") == expected  # spaces around do not count
    assert pseudonym(b"j" * 32, "ada@example.com") != expected  # another key, another name
    assert pseudonym(KEY, "") == "" and pseudonym(KEY, "  ") == ""  # missing stays missing


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("4111111111111111", "************1111"),
        ("4111 1111 1111 1234", "************1234"),
        ("5500-0000-0000-0004", "************0004"),
        ("12345", "****************"),  # too short to be a card: nothing kept
        ("not a card", "****************"),
        ("", ""),
    ],
)
def test_mask_last4_keeps_the_last_four_digits_of_card_numbers_only(
    value: str, masked: str
) -> None:
    assert masked_last4(value) == masked


def test_shape_masking_keeps_punctuation_and_hides_every_letter_and_digit() -> None:
    assert shape_masked("Ada Lovelace,ada@ex.com,4111") == "Xxx Xxxxxxxx,xxx@xx.xxx,9999"
    assert shape_masked("Zoë Ünal") == "Xxx Xxxx"


def test_csv_records_are_protected_in_columns_and_raw_text() -> None:
    data = _csv(
        [
            ["1", "2024-03-01T00:00:00Z", "Ada Lovelace", "ada@example.com", "4111111111111111", "9.5", "0"],
            ["2", "2024-03-01T00:01:00Z", 'Doe, "JJ" Jane', "jj@example.org", "5500000000000004", "1.0", "1"],
        ]
    )  # fmt: skip
    out = _protect_csv(data)
    assert out["email"].to_list() == [
        pseudonym(KEY, "ada@example.com"),
        pseudonym(KEY, "jj@example.org"),
    ]
    first = next(csv.reader([out["_raw"][0]]))
    assert first == [
        "1",
        "2024-03-01T00:00:00Z",
        "",  # dropped: empty, so the fields still line up with the header
        pseudonym(KEY, "ada@example.com"),
        "************1111",
        "9.5",
        "0",
    ]
    second = next(csv.reader([out["_raw"][1]]))
    assert second[2:5] == ["", pseudonym(KEY, "jj@example.org"), "************0004"]
    text = _everything(out)
    for plain in ("Ada", "Lovelace", "ada@example.com", "4111111111111111", "Jane", "jj@"):
        assert plain not in text


def test_records_the_reader_could_not_split_keep_only_their_shape() -> None:
    good = _csv(
        [["1", "2024-03-01T00:00:00Z", "Ada L", "ada@example.com", "4111111111111111", "9", "0"]]
    )
    ragged = b"2,2024-03-01T00:01:00Z,Lovelace, Ada,ada@example.com,4111111111111111,9,0\n"
    bad_utf8 = b"3,2024-03-01T00:02:00Z,Ada\xff Byron,ada@example.com,4111111111111111,9\n"
    out = _protect_csv(good + ragged + bad_utf8)
    assert out["_reject"].to_list()[1:] == ["expected 7 fields, found 8", "invalid UTF-8 bytes"]
    assert (
        out["_raw"][1]
        == "9,9999-99-99X99:99:99X,Xxxxxxxx, Xxx,xxx@xxxxxxx.xxx,9999999999999999,9,9"
    )
    assert (
        out["_raw"][2]
        == "9,9999-99-99X99:99:99X,Xxx\ufffd Xxxxx,xxx@xxxxxxx.xxx,9999999999999999,9"
    )
    assert "ada@" not in _everything(out) and "4111" not in _everything(out)


def test_a_line_too_long_keeps_only_the_shape_of_its_preview() -> None:
    person = b"2,2024-03-01T00:01:00Z,Ada Lovelace,ada@example.com,4111111111111111,"
    out = _protect_csv(_csv([]) + person + b"9" * MAX_LINE_BYTES + b",0\n")
    assert out["_reject"][0].startswith("line longer than")
    assert out["_raw"][0].startswith("9,9999-99-99X99:99:99X,Xxx Xxxxxxxx,xxx@xxxxxxx.xxx,")
    assert "Ada" not in _everything(out) and "4111" not in _everything(out)


def test_a_file_without_a_header_line_keeps_no_personal_data_in_its_header() -> None:
    line = b"1,2024-03-01T00:00:00Z,Ada Lovelace,ada@example.com,4111111111111111,9,0\n"
    header, records = parse_csv(line + line.replace(b"1,", b"2,", 1), DECLARED)
    out = protected_records(records, RULES, KEY, raw_format="csv", header=header)  # type: ignore[arg-type]
    assert "ada@example.com" in header  # the reader took line 1 for the header
    kept = protected_header(header, {*DECLARED, *RULES})
    assert kept[2:5] == ["Xxx Xxxxxxxx", "xxx@xxxxxxx.xxx", "9999999999999999"]
    assert protected_header(HEADER, {*DECLARED, *RULES}) == HEADER
    assert "Ada" not in _everything(out) and "ada@" not in _everything(out)


def test_json_records_are_protected_at_any_depth_and_dropped_keys_vanish() -> None:
    lines = [
        {"id": 1, "ts": "2024-03-01T00:00:00Z", "email": "ada@example.com", "amount": 9,
         "fraud": 0, "name": "Ada", "card_number": 4111111111111111,
         "extra": {"name": "Ada", "email": "ada@example.com"}},
    ]  # fmt: skip
    data = ("\n".join(json.dumps(line) for line in lines) + "\n{broken ada@example.com\n").encode()
    _, records = parse_ndjson(data, DECLARED)
    out = protected_records(records, RULES, KEY, raw_format="json")  # type: ignore[arg-type]
    raw = json.loads(out["_raw"][0])
    alias = pseudonym(KEY, "ada@example.com")
    assert raw == {
        "id": 1,
        "ts": "2024-03-01T00:00:00Z",
        "email": alias,
        "amount": 9,
        "fraud": 0,
        "card_number": "************1111",  # a JSON number is masked as its text
        "extra": {"email": alias},
    }
    assert out["email"][0] == alias
    assert out["_raw"][1] == "{xxxxxx xxx@xxxxxxx.xxx"  # invalid JSON: shape only


def test_parquet_rows_are_protected_like_json() -> None:
    frame = pl.DataFrame(
        {"id": [1], "ts": ["2024-03-01T00:00:00Z"], "email": ["ada@example.com"],
         "amount": [9.0], "fraud": [0], "name": ["Ada Lovelace"]}
    )  # fmt: skip
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    _, records = parse_parquet(buffer.getvalue(), DECLARED)
    out = protected_records(records, RULES, KEY, raw_format="json")  # type: ignore[arg-type]
    assert "Lovelace" not in _everything(out) and "ada@" not in _everything(out)
    assert json.loads(out["_raw"][0])["email"] == pseudonym(KEY, "ada@example.com")


def test_reject_reasons_are_scrubbed_of_the_records_personal_values() -> None:
    records = pl.DataFrame(
        {
            "email": [None],
            "_line": [1],
            "_raw": [json.dumps({"email": "ada@example.com"})],
            "_reject": ["email 'ada@example.com' is not a readable citext"],
        }
    )
    out = protected_records(records, RULES, KEY, raw_format="json")  # type: ignore[arg-type]
    assert (
        out["_reject"][0] == f"email '{pseudonym(KEY, 'ada@example.com')}' is not a readable citext"
    )


def test_without_rules_the_records_are_returned_untouched() -> None:
    _, records = parse_csv(_csv([["1", "t", "Ada", "a@b.c", "4111", "1", "0"]]), DECLARED)
    assert protected_records(records, {}, KEY, raw_format="csv", header=HEADER) is records


names = st.from_regex(r"[A-WYZ][a-wyz]{3,9} [A-WYZ][a-wyz]{3,9}", fullmatch=True)
emails = st.from_regex(r"[a-wyz]{4,10}\.[a-wyz]{4,10}@example\.(com|org)", fullmatch=True)
cards = st.from_regex(r"4[0-9]{15}", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(
    people=st.lists(st.tuples(names, emails, cards), min_size=1, max_size=8),
    damage=st.lists(st.sampled_from(["none", "comma", "quote", "newline", "utf8", "short"]), min_size=8, max_size=8),
)  # fmt: skip
def test_no_plaintext_survives_whatever_the_reader_made_of_a_line(
    people: list[tuple[str, str, str]], damage: list[str]
) -> None:
    lines = [",".join(HEADER).encode()]
    for i, ((name, email, card), how) in enumerate(zip(people, damage, strict=False)):
        fields = [str(i), "2024-03-01T00:00:00Z", name, email, card, "1.5", "0"]
        if how == "comma":
            fields[2] = name.replace(" ", ", ")  # unquoted: one field too many
        elif how == "quote":
            fields[2] = '"' + name.replace(" ", '"" ') + '"'
        elif how == "newline":
            fields[2] = '"' + name.replace(" ", "\n") + '"'
        elif how == "short":
            fields = fields[:-1]
        line = ",".join(fields).encode()
        lines.append(line.replace(b",", b"\xff,", 1) if how == "utf8" else line)
    out = _protect_csv(b"\n".join(lines) + b"\n")
    text = _everything(out)
    for name, email, card in people:
        for part in (*name.split(" "), email, card, card[:12]):
            assert part not in text


def _config(tmp_path: Path, **pipeline: object) -> PipelineConfig:
    body = {
        "source": {"kind": "files", "path": "landing/*.csv"},
        "event_time": "ts",
        "key": "id",
        "target": "fraud",
        "features": ["email", "amount"],
        "categorical": ["email"],
        **pipeline,
    }
    return parse_config({"pipelines": {"t": body}}, tmp_path / "tidemill.toml").pipeline("t")


def test_subject_value_is_the_stored_form_of_a_subject(tmp_path: Path) -> None:
    hashed = _config(tmp_path, pii={"email": "hash"}, subject="email")
    assert subject_value(hashed, " ada@example.com", KEY) == pseudonym(KEY, "ada@example.com")
    plain = _config(tmp_path, subject="email")
    assert subject_value(plain, " ada@example.com ", KEY) == "ada@example.com"
    with pytest.raises(ValueError, match="declares no `subject`"):
        subject_value(_config(tmp_path), "ada@example.com", KEY)
