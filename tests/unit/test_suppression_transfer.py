"""Import/export of the suppression list (relay/suppression/transfer.py)."""

from __future__ import annotations

import asyncio
import io
import json
import re
import string
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.addresses import check_address
from relay.suppression.base import Reason, StoreError, SuppressionEntry
from relay.suppression.memory import MemoryStore
from relay.suppression.sqlite import SqliteStore
from relay.suppression.transfer import (
    _COMMON_ADDRESS,
    MAX_ERRORS,
    ImportResult,
    export_entries,
    guess_format,
    import_entries,
)

ENTRIES = [
    SuppressionEntry("alice@example.com", Reason.BOUNCE, "sns", 1_700_000_000.25, "fb-1", "Permanent/General"),
    SuppressionEntry("Bob.Smith@Example.ORG", Reason.COMPLAINT, "sqs", 1_700_000_100.0, None, None),
    SuppressionEntry("carol+tag@mail.example.net", Reason.MANUAL, "manual", 1_700_000_200.5, None, "asked, by phone"),
    SuppressionEntry('"odd,quoted"@example.com', Reason.BOUNCE, "import", 1_700_000_300.0, None, 'say "hi"'),
]


def run(coro):
    return asyncio.run(coro)


async def _opened(store=None):
    store = store or MemoryStore()
    await store.open()
    return store


async def _all(store) -> list[SuppressionEntry]:
    return [entry async for entry in store.iter_entries()]


def import_text(text: str, fmt: str = "csv", **kwargs) -> tuple[ImportResult, list[SuppressionEntry]]:
    async def scenario():
        store = await _opened()
        result = await import_entries(store, io.StringIO(text), fmt=fmt, **kwargs)
        return result, await _all(store)

    return run(scenario())


def export_text(entries: Iterable[SuppressionEntry], fmt: str, full: bool = False) -> str:
    async def scenario():
        store = await _opened()
        await store.put_many(entries)
        out = io.StringIO()
        n = await export_entries(store, out, fmt=fmt, full=full)
        assert n == await store.count()
        return out.getvalue()

    return run(scenario())


def pairs(entries: Iterable[SuppressionEntry]) -> list[tuple[str, Reason]]:
    return [(e.address, e.reason) for e in entries]


# --- round trips -------------------------------------------------------------------------------


def test_csv_export_is_ses_bulk_format_and_round_trips() -> None:
    text = export_text(ENTRIES, "csv")
    lines = text.splitlines()
    assert lines[0] == "emailAddress,reason"
    assert "alice@example.com,BOUNCE" in lines
    assert '"""odd,quoted""@example.com",BOUNCE' in lines
    result, imported = import_text(text)
    assert (result.imported, result.skipped, result.errors) == (4, 0, [])
    assert sorted(pairs(imported)) == sorted(pairs(ENTRIES))
    assert {e.source for e in imported} == {"import"}


def test_full_csv_round_trips_every_field() -> None:
    text = export_text(ENTRIES, "csv", full=True)
    assert text.splitlines()[0] == "emailAddress,reason,source,created_at,feedback_id,detail"
    result, imported = import_text(text)
    assert result.errors == []
    assert sorted(imported, key=lambda e: e.key) == sorted(ENTRIES, key=lambda e: e.key)


def test_full_csv_folds_line_breaks_in_detail() -> None:
    entry = SuppressionEntry("a@example.com", Reason.BOUNCE, "sns", 1.0, None, "line one\r\nline two\nthree")
    text = export_text([entry], "csv", full=True)
    assert len(text.splitlines()) == 2
    _, imported = import_text(text)
    assert imported[0].detail == "line one line two three"


def test_jsonl_round_trips_every_field() -> None:
    text = export_text(ENTRIES, "jsonl")
    records = [json.loads(line) for line in text.splitlines()]
    assert set(records[0]) == {"address", "reason", "source", "created_at", "feedback_id", "detail"}
    result, imported = import_text(text, "jsonl")
    assert (result.imported, result.skipped) == (4, 0)
    assert sorted(imported, key=lambda e: e.key) == sorted(ENTRIES, key=lambda e: e.key)


def test_round_trip_through_sqlite_files(tmp_path: Path) -> None:
    async def scenario(out):
        src = await _opened(SqliteStore(tmp_path / "a.db"))
        dst = await _opened(SqliteStore(tmp_path / "b.db"))
        try:
            await src.put_many(ENTRIES)
            assert await export_entries(src, out, fmt="jsonl") == 4
            out.close()
            result = await import_entries(dst, tmp_path / "out.jsonl", fmt="jsonl")
            assert result.imported == 4
            return await _all(src), await _all(dst)
        finally:
            await src.close()
            await dst.close()

    with open(tmp_path / "out.jsonl", "w", encoding="utf-8") as out:
        before, after = run(scenario(out))
    assert before == after


# --- CSV variants ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "emailAddress,reason\na@example.com,BOUNCE\nb@example.com,COMPLAINT\n",
        "EmailAddress,Reason\r\na@example.com,bounce\r\nb@example.com,Complaint\r\n",
        "\ufeffemailAddress,reason\na@example.com,BOUNCE\nb@example.com,COMPLAINT",  # BOM, no final newline
        "email_address , REASON\n a@example.com , BOUNCE \nb@example.com,COMPLAINT\n",
        "reason,emailAddress\nBOUNCE,a@example.com\nCOMPLAINT,b@example.com\n",
        "emailAddress,reason,comment\na@example.com,BOUNCE,x\nb@example.com,COMPLAINT,\n",
        "a@example.com,BOUNCE\nb@example.com,COMPLAINT\n",  # no header
        "\n\nemailAddress,reason\n\na@example.com,BOUNCE\n   \nb@example.com,COMPLAINT\n\n",
    ],
)
def test_csv_header_variants(text: str) -> None:
    result, imported = import_text(text)
    assert (result.imported, result.skipped, result.errors) == (2, 0, [])
    assert pairs(imported) == [("a@example.com", Reason.BOUNCE), ("b@example.com", Reason.COMPLAINT)]


def test_manual_reason_is_accepted() -> None:
    _, imported = import_text("emailAddress,reason\na@example.com,manual\n")
    assert imported[0].reason is Reason.MANUAL


@pytest.mark.parametrize("text", ["", "\n\n", "emailAddress,reason\n", "emailAddress,reason\n\n  \n"])
def test_empty_inputs(text: str) -> None:
    result, imported = import_text(text)
    assert (result.imported, result.skipped, result.errors, imported) == (0, 0, [], [])
    result, imported = import_text(text, "jsonl")
    assert (result.imported, result.skipped, imported) == (0, int(text.startswith("email")), [])


def test_bad_rows_are_skipped_with_line_numbers() -> None:
    text = "\n".join(
        [
            "emailAddress,reason",  # 1
            "good1@example.com,BOUNCE",  # 2
            "no-at-sign,BOUNCE",  # 3
            "x@example.com,SOFT",  # 4
            "y@example.com",  # 5
            ",COMPLAINT",  # 6
            "good2@example.com,complaint",  # 7
            "bad@exa mple.com,BOUNCE",  # 8
            "jos\u00e9@example.com,BOUNCE",  # 9
            "a@b@example.com,BOUNCE",  # 10
            "@example.com,BOUNCE",  # 11
            "user@,BOUNCE",  # 12
            "user@localhost,BOUNCE",  # 13
            "good3@example.com,MANUAL",  # 14
        ]
    )
    result, imported = import_text(text)
    assert pairs(imported) == [
        ("good1@example.com", Reason.BOUNCE),
        ("good2@example.com", Reason.COMPLAINT),
        ("good3@example.com", Reason.MANUAL),
    ]
    assert (result.imported, result.skipped) == (3, 10)
    numbers = [int(re.match(r"line (\d+): ", e).group(1)) for e in result.errors]
    assert numbers == [3, 4, 5, 6, 8, 9, 10, 11, 12, 13]
    assert "no @domain" in result.errors[0]
    assert "invalid reason 'SOFT'" in result.errors[1]
    assert result.errors[2] == "line 5: missing reason"
    assert result.errors[3] == "line 6: missing address"


def test_stray_quote_does_not_swallow_the_following_rows() -> None:
    result, imported = import_text('"unterminated@example.com,BOUNCE\nok@example.com,BOUNCE\n')
    assert pairs(imported) == [("ok@example.com", Reason.BOUNCE)]
    assert result.skipped == 1 and result.errors[0].startswith("line 1: ")


def test_first_line_neither_header_nor_address_is_a_bad_row() -> None:
    result, imported = import_text("hello,world\na@example.com,BOUNCE\n")
    assert pairs(imported) == [("a@example.com", Reason.BOUNCE)]
    assert result.errors[0].startswith("line 1: invalid address 'hello'")


def test_error_list_is_capped_but_all_bad_rows_are_counted() -> None:
    text = "".join(f"bad{i},BOUNCE\n" for i in range(50)) + "ok@example.com,BOUNCE\n"
    result, imported = import_text(text)
    assert result.skipped == 50 and len(result.errors) == MAX_ERRORS == 20
    assert result.errors[-1].startswith("line 20: ")
    assert len(imported) == 1


def test_full_csv_bad_created_at_and_iso_dates() -> None:
    text = (
        "emailAddress,reason,created_at,source\n"
        "a@example.com,BOUNCE,2024-01-02T03:04:05Z,crm\n"
        "b@example.com,BOUNCE,yesterday,crm\n"
        "c@example.com,BOUNCE,,\n"
    )
    before = time.time()
    result, imported = import_text(text, source="bulk")
    assert result.errors == ["line 3: invalid created_at 'yesterday'"]
    a, c = imported
    assert a.created_at == 1704164645.0 and a.source == "crm"
    assert c.created_at >= before and c.source == "bulk"


def test_duplicates_last_one_wins() -> None:
    result, imported = import_text("a@example.com,BOUNCE\nA@Example.com,COMPLAINT\n")
    assert result.imported == 2
    assert pairs(imported) == [("A@Example.com", Reason.COMPLAINT)]


# --- JSON lines --------------------------------------------------------------------------------


def test_jsonl_bad_lines_and_alias() -> None:
    lines = [
        json.dumps({"emailAddress": "a@example.com", "reason": "bounce"}),  # 1
        "{not json",  # 2
        "[1, 2]",  # 3
        json.dumps({"reason": "BOUNCE"}),  # 4
        json.dumps({"address": "b@example.com", "reason": "BOUNCE", "created_at": "soon"}),  # 5
        json.dumps({"address": "c@example.com", "reason": "BOUNCE", "detail": 5}),  # 6
        "",  # 7 (blank: ignored)
        "[" * 100_000,  # 8: deep nesting must not crash
        json.dumps({"address": "d@example.com", "reason": "COMPLAINT", "source": "x", "created_at": 5}),  # 9
    ]
    result, imported = import_text("\n".join(lines), "jsonl", source="bulk")
    assert [(e.address, e.reason, e.source) for e in imported] == [
        ("a@example.com", Reason.BOUNCE, "bulk"),
        ("d@example.com", Reason.COMPLAINT, "x"),
    ]
    assert [e.split(":")[0] for e in result.errors] == ["line 2", "line 3", "line 4", "line 5", "line 6", "line 8"]
    assert result.skipped == 6


def test_guess_format() -> None:
    assert guess_format("list.jsonl") == guess_format("X.NDJSON") == "jsonl"
    assert guess_format("list.csv") == guess_format("-") == "csv"


# --- streams, batches, progress, failures ----------------------------------------------------


class CountingStore(MemoryStore):
    def __init__(self, fail_on: int | None = None) -> None:
        super().__init__()
        self.calls: list[int] = []
        self.fail_on = fail_on

    async def put_many(self, entries):
        entries = list(entries)
        self.calls.append(len(entries))
        if self.fail_on is not None and len(self.calls) == self.fail_on:
            raise StoreError("disk full")
        return await super().put_many(entries)


def test_batches_and_progress() -> None:
    text = "".join(f"u{i}@example.com,BOUNCE\n" for i in range(10))
    seen: list[int] = []

    async def scenario():
        store = await _opened(CountingStore())
        result = await import_entries(store, io.StringIO(text), fmt="csv", batch=3, progress=seen.append)
        return store, result

    store, result = run(scenario())
    assert store.calls == [3, 3, 3, 1]
    assert seen == [3, 6, 9, 10]
    assert result.imported == 10


def test_exact_multiple_of_batch() -> None:
    text = "".join(f"u{i}@example.com,BOUNCE\n" for i in range(6))

    async def scenario():
        store = await _opened(CountingStore())
        await import_entries(store, io.StringIO(text), fmt="csv", batch=3)
        return store

    assert run(scenario()).calls == [3, 3]


def test_store_failure_propagates_and_keeps_committed_batches(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("".join(f"u{i}@example.com,BOUNCE\n" for i in range(10)))

    async def scenario():
        store = await _opened(CountingStore(fail_on=2))
        with pytest.raises(StoreError):
            await import_entries(store, path, fmt="csv", batch=4)
        return await store.count()

    assert run(scenario()) == 4


def test_binary_stream_is_decoded_and_left_open() -> None:
    raw = io.BytesIO("emailAddress,reason\na@example.com,BOUNCE\nb\xe9@example.com,BOUNCE\n".encode("latin-1"))

    async def scenario():
        store = await _opened()
        result = await import_entries(store, raw, fmt="csv")
        return result, await _all(store)

    result, imported = run(scenario())
    assert pairs(imported) == [("a@example.com", Reason.BOUNCE)]
    assert result.skipped == 1 and "Non-ASCII" in result.errors[0]
    assert not raw.closed


def test_bad_arguments() -> None:
    async def scenario(**kwargs):
        await import_entries(await _opened(), io.StringIO(""), **kwargs)

    with pytest.raises(ValueError):
        run(scenario(fmt="xml"))
    with pytest.raises(ValueError):
        run(scenario(fmt="csv", batch=0))


# --- properties --------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(max_size=80), max_size=30))
def test_arbitrary_csv_lines_never_crash(lines: list[str]) -> None:
    text = "\n".join(lines)
    for fmt in ("csv", "jsonl"):
        result, imported = import_text(text, fmt)
        data_lines = [line for line in io.StringIO(text) if line.strip()]
        assert result.imported + result.skipped <= len(data_lines)
        assert len(imported) <= result.imported
        assert all(re.match(r"line \d+: ", e) for e in result.errors)
        for entry in imported:
            check_address(entry.address)


_ADDRESSISH = st.text(alphabet=string.ascii_letters[:6] + string.digits[:3] + "@.-_+\"\\ ,!", max_size=40)


@settings(max_examples=1000, deadline=None)
@given(st.one_of(_ADDRESSISH, st.from_regex(r"[a-z.-]{0,70}@[a-z0-9.-]{0,70}", fullmatch=True)))
def test_fast_path_accepts_only_what_check_address_accepts(address: str) -> None:
    if _COMMON_ADDRESS.fullmatch(address) and len(address) <= 254:
        check_address(address)


# --- scale -------------------------------------------------------------------------------------


def test_one_million_rows_into_sqlite(tmp_path: Path) -> None:
    n = 1_000_000
    path = tmp_path / "big.csv"
    with open(path, "w", encoding="ascii") as f:
        f.write("emailAddress,reason\n")
        f.writelines(f"user{i}@example{i % 97}.com,{'COMPLAINT' if i % 3 == 0 else 'BOUNCE'}\n" for i in range(n))

    async def scenario():
        store = await _opened(SqliteStore(tmp_path / "s.db"))
        try:
            started = time.perf_counter()
            result = await import_entries(store, path, fmt="csv")
            elapsed = time.perf_counter() - started
            return result, await store.count(), await store.get(f"user{n - 1}@example{(n - 1) % 97}.com"), elapsed
        finally:
            await store.close()

    result, count, last, elapsed = run(scenario())
    print(f"\nimported {n} CSV rows into sqlite in {elapsed:.1f}s ({n / elapsed:,.0f} rows/s)")
    assert (result.imported, result.skipped, count) == (n, 0, n)
    assert last is not None and last.reason is Reason.COMPLAINT
