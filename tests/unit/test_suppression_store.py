"""One contract suite for every suppression backend, plus sqlite-specific behaviour."""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.suppression import BACKENDS, create_store
from relay.suppression import dynamodb as dynamodb_module
from relay.suppression.base import Reason, StoreError, SuppressionEntry, SuppressionStore, address_key
from relay.suppression.dynamodb import DynamoDbStore
from relay.suppression.memory import MemoryStore
from relay.suppression.sqlite import SqliteStore
from testkit.moto_server import MotoServer
from testkit.net import free_port

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    """No pytest-asyncio here: each step runs on a fresh loop (the stores do not bind to a loop)."""

    async def wrapper() -> T:
        return await coro

    return asyncio.run(wrapper())


async def collect(store: SuppressionStore) -> list[SuppressionEntry]:
    return [entry async for entry in store.iter_entries()]


REGION = "us-east-1"
TABLE = "ses-relay-suppression"


def make(backend: str, path: Path, endpoint_url: str | None = None, table: str = TABLE) -> SuppressionStore:
    if backend == "memory":
        return MemoryStore()
    if backend == "dynamodb":
        return DynamoDbStore(table, region=REGION, endpoint_url=endpoint_url)
    if backend == "sqlite-cached":
        return SqliteStore(path / "suppression.db", cache_entries=CACHE_ENTRIES)
    return SqliteStore(path / "suppression.db")


CACHE_ENTRIES = 4  # small, so the tests also run past the bound


@pytest.fixture(params=["memory", "sqlite", "sqlite-cached", "dynamodb"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], SuppressionStore]]:
    """A factory of unopened stores (sharing one list); whatever it built is closed at teardown.

    dynamodb runs on moto's server: reset, with a fresh table created per test.
    """
    built: list[SuppressionStore] = []
    endpoint_url: str | None = None
    if request.param == "dynamodb":
        moto_server: MotoServer = request.getfixturevalue("moto_server")
        moto_server.reset()
        endpoint_url = moto_server.endpoint_url
        assert run(DynamoDbStore(TABLE, region=REGION, endpoint_url=endpoint_url).create_table()) is True

    def factory() -> SuppressionStore:
        store = make(request.param, tmp_path, endpoint_url)
        built.append(store)
        return store

    yield factory
    for store in built:
        run(store.close())


@pytest.fixture
def store(new_store: Callable[[], SuppressionStore]) -> SuppressionStore:
    s = new_store()
    run(s.open())
    return s


def entry(address: str, reason: Reason = Reason.BOUNCE, **kw: object) -> SuppressionEntry:
    return SuppressionEntry(address=address, reason=reason, **kw)  # type: ignore[arg-type]


# --- contract: every backend ----------------------------------------------------------------


def test_get_on_empty_store_is_none(store: SuppressionStore) -> None:
    assert run(store.get("bob@example.com")) is None
    assert run(store.count()) == 0
    assert run(collect(store)) == []


def test_put_then_get_round_trips_every_field(store: SuppressionStore) -> None:
    full = SuppressionEntry(
        address="bob@example.com",
        reason=Reason.COMPLAINT,
        source="sns",
        created_at=1712345678.123456,
        feedback_id="0100018e-abcd-feedback",
        detail="abuse",
    )
    bare = SuppressionEntry(address="ann@example.org", reason=Reason.MANUAL, created_at=1.5)
    run(store.put(full))
    run(store.put(bare))

    got = run(store.get("bob@example.com"))
    assert got == full
    assert isinstance(got.reason, Reason) and got.reason is Reason.COMPLAINT
    assert isinstance(got.created_at, float) and got.created_at == 1712345678.123456
    got_bare = run(store.get("ann@example.org"))
    assert got_bare == bare
    assert got_bare.feedback_id is None and got_bare.detail is None and got_bare.source == "manual"


def test_lookup_is_case_insensitive_and_keeps_address_as_given(store: SuppressionStore) -> None:
    bob = entry("bob@example.com", created_at=3.0)
    run(store.put(bob))
    assert run(store.get("Bob@Example.COM")) == bob
    run(store.put(entry("Carol@Example.NET", created_at=7.0)))
    got = run(store.get("  carol@example.net "))
    assert got is not None and got.address == "Carol@Example.NET"
    assert run(store.delete("CAROL@EXAMPLE.NET")) is True
    assert run(store.get("Carol@Example.NET")) is None


def test_put_replaces_entry_with_same_key(store: SuppressionStore) -> None:
    run(store.put(entry("bob@example.com", Reason.BOUNCE, created_at=1.0)))
    newer = entry("BOB@example.com", Reason.COMPLAINT, source="sqs", created_at=2.0, detail="x")
    run(store.put(newer))
    assert run(store.count()) == 1
    assert run(store.get("bob@example.com")) == newer


def test_delete_returns_true_then_false(store: SuppressionStore) -> None:
    run(store.put(entry("bob@example.com")))
    run(store.put(entry("ann@example.com")))
    assert run(store.delete("bob@example.com")) is True
    assert run(store.delete("bob@example.com")) is False
    assert run(store.delete("nobody@example.com")) is False
    assert run(store.get("bob@example.com")) is None
    assert run(store.get("ann@example.com")) is not None


def test_count(store: SuppressionStore) -> None:
    for i in range(7):
        run(store.put(entry(f"user{i}@example.com")))
    run(store.put(entry("USER3@example.com")))  # replaces, does not add
    assert run(store.count()) == 7
    run(store.delete("user0@example.com"))
    assert run(store.count()) == 6


def test_put_many_from_generator(store: SuppressionStore) -> None:
    def gen() -> Iterator[SuppressionEntry]:
        for i in range(5000):
            yield entry(f"u{i:05d}@example.com", source="import", created_at=float(i))

    assert run(store.put_many(gen())) == 5000
    assert run(store.count()) == 5000
    assert run(store.get("U04999@EXAMPLE.COM")) == entry(
        "u04999@example.com", source="import", created_at=4999.0
    )
    # iter_entries spans several sqlite pages here
    keys = [e.key for e in run(collect(store))]
    assert keys == [f"u{i:05d}@example.com" for i in range(5000)]


def test_put_many_with_duplicate_keys_keeps_the_last(store: SuppressionStore) -> None:
    batch = [
        entry("bob@example.com", Reason.BOUNCE, created_at=1.0),
        entry("ann@example.com", created_at=2.0),
        entry("Bob@Example.com", Reason.COMPLAINT, created_at=3.0),
        entry("BOB@EXAMPLE.COM", Reason.MANUAL, created_at=4.0),
    ]
    assert run(store.put_many(batch)) == 4  # entries consumed
    assert run(store.count()) == 2
    assert run(store.get("bob@example.com")) == batch[-1]


def test_put_many_empty(store: SuppressionStore) -> None:
    assert run(store.put_many(iter(()))) == 0
    assert run(store.count()) == 0


def test_put_many_is_all_or_nothing(store: SuppressionStore) -> None:
    run(store.put(entry("kept@example.com")))

    def broken() -> Iterator[SuppressionEntry]:
        for i in range(25_000):  # more than one sqlite chunk before failing
            yield entry(f"u{i}@example.com")
        raise ValueError("bad input line")

    with pytest.raises(ValueError, match="bad input line"):
        run(store.put_many(broken()))
    assert run(store.count()) == 1
    assert run(store.get("u1@example.com")) is None
    # and the store is still usable afterwards
    run(store.put(entry("after@example.com")))
    assert run(store.count()) == 2


def in_key_order(store: SuppressionStore, entries: list[SuppressionEntry]) -> list[SuppressionEntry]:
    """sqlite and memory iterate in key order; DynamoDB streams its Scan in hash order."""
    return sorted(entries, key=lambda e: e.key) if isinstance(store, DynamoDbStore) else entries


def test_iter_entries_ordered_by_key(store: SuppressionStore) -> None:
    addresses = ["zed@example.com", "Alice@Example.com", "bob@example.com", "ALAN@example.com"]
    for i, a in enumerate(addresses):
        run(store.put(entry(a, created_at=float(i))))
    got = in_key_order(store, run(collect(store)))
    assert [e.address for e in got] == [
        "ALAN@example.com",
        "Alice@Example.com",
        "bob@example.com",
        "zed@example.com",
    ]
    assert [e.key for e in got] == sorted(address_key(a) for a in addresses)


def test_approximate_count_is_a_count(store: SuppressionStore) -> None:
    assert run(store.approximate_count()) == 0
    run(store.put_many(entry(f"n{i}@example.com") for i in range(7)))
    approx = run(store.approximate_count())
    if isinstance(store, DynamoDbStore):
        assert 0 <= approx <= 7  # DescribeTable's ItemCount lags (AWS: ~6 h; moto: live)
    else:
        assert approx == 7  # exact where it is free


def test_healthy_only_between_open_and_close(new_store: Callable[[], SuppressionStore]) -> None:
    s = new_store()
    assert s.healthy() is False
    run(s.open())
    assert s.healthy() is True
    run(s.close())
    assert s.healthy() is False
    run(s.close())  # idempotent
    assert s.healthy() is False


def test_use_before_open_or_after_close_raises_store_error(new_store: Callable[[], SuppressionStore]) -> None:
    s = new_store()
    with pytest.raises(StoreError):
        run(s.get("bob@example.com"))
    run(s.open())
    run(s.put(entry("bob@example.com")))
    run(s.close())
    with pytest.raises(StoreError):
        run(s.put(entry("ann@example.com")))
    with pytest.raises(StoreError):
        run(collect(s))


# --- factory --------------------------------------------------------------------------------


def test_create_store(tmp_path: Path) -> None:
    assert set(BACKENDS) == {"sqlite", "memory", "dynamodb"}
    assert isinstance(create_store("memory", path=None), MemoryStore)
    d = create_store(
        "dynamodb",
        path=None,
        dynamodb_table="t1",
        dynamodb_region="eu-west-1",
        dynamodb_endpoint_url="http://127.0.0.1:1",
    )
    assert isinstance(d, DynamoDbStore) and d.table == "t1" and d.healthy() is False
    with pytest.raises(StoreError, match="needs a table"):
        create_store("dynamodb", path=None)
    s = create_store("sqlite", path=tmp_path / "s.db")
    assert isinstance(s, SqliteStore) and s.path == tmp_path / "s.db"
    with pytest.raises(StoreError, match="needs a path"):
        create_store("sqlite", path=None)
    with pytest.raises(StoreError, match="unknown suppression backend 'redis'"):
        create_store("redis", path=None)


def test_importing_the_package_loads_no_backend() -> None:
    code = (
        "import sys, relay.suppression; "
        "print(sorted(m for m in sys.modules if m.startswith('relay.suppression.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['relay.suppression.base']"


# --- sqlite only ----------------------------------------------------------------------------


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "suppression.db"


@pytest.fixture
def sqlite_store(db_path: Path) -> Iterator[SqliteStore]:
    s = SqliteStore(db_path)
    run(s.open())
    yield s
    run(s.close())


def test_sqlite_creates_private_parent_directory(db_path: Path, sqlite_store: SqliteStore) -> None:
    assert db_path.is_file()
    assert db_path.parent.stat().st_mode & 0o777 == 0o700


def test_sqlite_persists_across_reopen(db_path: Path) -> None:
    first = SqliteStore(db_path)
    run(first.open())
    e = entry("Bob@Example.com", Reason.COMPLAINT, source="sns", created_at=123.25, feedback_id="f-1")
    run(first.put_many([e, entry("ann@example.com", created_at=1.0)]))
    run(first.close())

    second = SqliteStore(db_path)
    run(second.open())
    try:
        assert run(second.get("bob@example.com")) == e
        assert run(second.count()) == 2
    finally:
        run(second.close())


def test_sqlite_second_instance_writes_are_visible(db_path: Path, sqlite_store: SqliteStore) -> None:
    assert run(sqlite_store.get("bob@example.com")) is None  # server has looked before
    cli = SqliteStore(db_path)  # e.g. `ses-relay suppress add` in another process
    run(cli.open())
    try:
        run(cli.put(entry("bob@example.com", Reason.MANUAL, created_at=5.0)))
        run(cli.put_many(entry(f"x{i}@example.com") for i in range(100)))
        got = run(sqlite_store.get("BOB@example.com"))
        assert got is not None and got.reason is Reason.MANUAL
        assert run(sqlite_store.count()) == 101
        assert run(cli.delete("bob@example.com")) is True
        assert run(sqlite_store.get("bob@example.com")) is None
    finally:
        run(cli.close())


def test_sqlite_uses_wal_and_schema_version(db_path: Path, sqlite_store: SqliteStore) -> None:
    run(sqlite_store.put(entry("bob@example.com")))
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'suppression'").fetchone()[0]
        assert "WITHOUT ROWID" in sql
        assert conn.execute("SELECT key, address FROM suppression").fetchall() == [
            ("bob@example.com", "bob@example.com")
        ]


def test_sqlite_connection_belongs_to_the_worker_thread(sqlite_store: SqliteStore) -> None:
    # Created on the worker thread with check_same_thread on: the event loop thread cannot use it.
    conn = sqlite_store._conn
    assert conn is not None
    with pytest.raises(sqlite3.ProgrammingError, match="thread"):
        conn.execute("SELECT 1")


def test_sqlite_open_directory_path_fails(tmp_path: Path) -> None:
    target = tmp_path / "is-a-dir"
    target.mkdir()
    s = SqliteStore(target)
    with pytest.raises(StoreError) as err:
        run(s.open())
    assert str(target) in str(err.value) and "directory" in str(err.value)
    assert "\n" not in str(err.value)
    assert s.healthy() is False


def test_sqlite_open_garbage_file_fails(tmp_path: Path) -> None:
    target = tmp_path / "garbage.db"
    garbage = b"this is not sqlite\x00\xff" * 200
    target.write_bytes(garbage)
    s = SqliteStore(target)
    with pytest.raises(StoreError) as err:
        run(s.open())
    assert str(target) in str(err.value) and "not a database" in str(err.value)
    assert "\n" not in str(err.value)
    assert s.healthy() is False
    assert target.read_bytes() == garbage  # left untouched


def test_sqlite_open_newer_schema_fails(tmp_path: Path) -> None:
    target = tmp_path / "future.db"
    with closing(sqlite3.connect(target)) as conn:
        conn.execute("PRAGMA user_version = 99")
        conn.commit()
    s = SqliteStore(target)
    with pytest.raises(StoreError) as err:
        run(s.open())
    assert str(target) in str(err.value) and "99" in str(err.value)
    assert s.healthy() is False
    with closing(sqlite3.connect(target)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 99  # not "migrated" down


def test_sqlite_open_uncreatable_parent_fails(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    target = blocker / "sub" / "suppression.db"  # parent cannot be created under a regular file
    with pytest.raises(StoreError) as err:
        run(SqliteStore(target).open())
    assert str(target) in str(err.value) and "cannot create directory" in str(err.value)


# --- dynamodb only (moto's server) ---------------------------------------------------------


@pytest.fixture
def moto_endpoint(moto_server: MotoServer) -> str:
    moto_server.reset()
    return moto_server.endpoint_url


@pytest.fixture
def ddb(moto_endpoint: str) -> Iterator[Callable[..., DynamoDbStore]]:
    """Factory of unopened DynamoDbStores on moto (default table TABLE); all closed at teardown."""
    built: list[DynamoDbStore] = []

    def factory(table: str = TABLE, endpoint_url: str | None = moto_endpoint) -> DynamoDbStore:
        store = DynamoDbStore(table, region=REGION, endpoint_url=endpoint_url)
        built.append(store)
        return store

    yield factory
    for store in built:
        run(store.close())


def assert_one_line_store_error(err: pytest.ExceptionInfo[StoreError], *needles: str) -> None:
    text = str(err.value)
    assert "\n" not in text
    for needle in needles:
        assert needle in text, text


def test_dynamodb_open_missing_table_says_create_table(ddb: Callable[..., DynamoDbStore]) -> None:
    s = ddb("no-such-table")
    with pytest.raises(StoreError) as err:
        run(s.open())
    assert_one_line_store_error(err, "no-such-table", "does not exist", "ses-relay suppression create-table")
    assert s.healthy() is False
    with pytest.raises(StoreError, match="not open"):
        run(s.get("bob@example.com"))


def test_dynamodb_create_table_true_then_false(ddb: Callable[..., DynamoDbStore], moto_endpoint: str) -> None:
    s = ddb()
    assert run(s.create_table()) is True  # unopened store: what the CLI does
    assert run(s.create_table()) is False
    run(s.open())
    assert run(s.create_table()) is False  # also fine on an open store
    assert s.healthy() is True
    import boto3

    client = boto3.client("dynamodb", region_name=REGION, endpoint_url=moto_endpoint)
    try:
        table = client.describe_table(TableName=TABLE)["Table"]
    finally:
        client.close()
    assert table["TableStatus"] == "ACTIVE"
    assert table["KeySchema"] == [{"AttributeName": "key", "KeyType": "HASH"}]
    assert table["AttributeDefinitions"] == [{"AttributeName": "key", "AttributeType": "S"}]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"


def test_dynamodb_item_layout_omits_none(ddb: Callable[..., DynamoDbStore], moto_endpoint: str) -> None:
    s = ddb()
    run(s.create_table())
    run(s.open())
    run(s.put(entry("Bob@Example.com", Reason.COMPLAINT, source="sns", created_at=12.5)))
    import boto3

    client = boto3.client("dynamodb", region_name=REGION, endpoint_url=moto_endpoint)
    try:
        item = client.get_item(TableName=TABLE, Key={"key": {"S": "bob@example.com"}})["Item"]
    finally:
        client.close()
    assert item == {
        "key": {"S": "bob@example.com"},
        "address": {"S": "Bob@Example.com"},
        "reason": {"S": "COMPLAINT"},
        "source": {"S": "sns"},
        "created_at": {"N": "12.5"},
    }


def test_dynamodb_open_wrong_key_schema_fails(ddb: Callable[..., DynamoDbStore], moto_endpoint: str) -> None:
    import boto3

    client = boto3.client("dynamodb", region_name=REGION, endpoint_url=moto_endpoint)
    try:
        client.create_table(
            TableName="other",
            AttributeDefinitions=[{"AttributeName": "email", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "email", "KeyType": "HASH"}],
            BillingMode="PAY_PER_REQUEST",
        )
    finally:
        client.close()
    with pytest.raises(StoreError) as err:
        run(ddb("other").open())
    assert_one_line_store_error(err, "'other'", "key schema")


def test_dynamodb_open_without_credentials_fails(
    ddb: Callable[..., DynamoDbStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    s = ddb()
    with pytest.raises(StoreError) as err:
        run(s.open())
    assert_one_line_store_error(err, TABLE, "no AWS credentials")
    assert s.healthy() is False


def test_dynamodb_open_unreachable_endpoint_fails(
    ddb: Callable[..., DynamoDbStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dynamodb_module, "MAX_ATTEMPTS", 1)  # skip botocore's retry backoff
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    s = ddb(endpoint_url=endpoint)
    with pytest.raises(StoreError) as err:
        run(s.open())
    assert_one_line_store_error(err, TABLE, endpoint)
    assert s.healthy() is False


def test_dynamodb_instances_share_the_list(ddb: Callable[..., DynamoDbStore]) -> None:
    relay_a, relay_b = ddb(), ddb()
    assert run(relay_a.create_table()) is True
    run(relay_a.open())
    run(relay_b.open())
    assert run(relay_a.get("bob@example.com")) is None
    run(relay_b.put(entry("Bob@Example.com", Reason.COMPLAINT, source="sns", created_at=5.0)))
    got = run(relay_a.get("BOB@example.com"))
    assert got is not None and got.reason is Reason.COMPLAINT and got.address == "Bob@Example.com"
    assert run(relay_a.put_many(entry(f"x{i}@example.com") for i in range(40))) == 40
    assert run(relay_b.count()) == 41
    assert len(run(collect(relay_b))) == 41
    assert run(relay_a.delete("bob@example.com")) is True
    assert run(relay_b.get("bob@example.com")) is None
    assert run(relay_b.delete("bob@example.com")) is False


def test_dynamodb_put_many_dedups_within_a_batch(
    ddb: Callable[..., DynamoDbStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    s = ddb()
    run(s.create_table())
    run(s.open())
    batches: list[list[str]] = []
    real = s._client.batch_write_item

    def spy(**kwargs: object) -> object:
        requests = kwargs["RequestItems"][TABLE]  # type: ignore[index]
        batches.append([r["PutRequest"]["Item"]["key"]["S"] for r in requests])
        return real(**kwargs)

    monkeypatch.setattr(s._client, "batch_write_item", spy)
    entries = [entry(f"u{i:02d}@example.com", created_at=float(i)) for i in range(60)]
    # duplicates inside the first chunk of 25, the last one must win
    entries[3] = entry("DUP@example.com", Reason.BOUNCE, created_at=100.0)
    entries[10] = entry("dup@Example.com", Reason.COMPLAINT, created_at=101.0)
    entries[20] = entry("Dup@example.COM", Reason.MANUAL, created_at=102.0, detail="last")
    # and across the chunk boundary (index 24 is in the first chunk, 25 in the second)
    entries[24] = entry("edge@example.com", Reason.BOUNCE, created_at=200.0)
    entries[25] = entry("EDGE@example.com", Reason.COMPLAINT, created_at=201.0)
    assert run(s.put_many(iter(entries))) == 60
    assert [len(b) for b in batches] == [23, 25, 10]
    assert all(len(set(b)) == len(b) for b in batches)
    assert run(s.count()) == 57
    assert run(s.get("dup@example.com")) == entries[20]
    assert run(s.get("edge@example.com")) == entries[25]
    assert sorted(e.key for e in run(collect(s))) == sorted({e.key for e in entries})


class CallCounter:
    """Counts the botocore calls a store's client makes, by operation (real calls to moto, not fakes)."""

    def __init__(self, store: DynamoDbStore, *operations: str) -> None:
        self.calls = dict.fromkeys(operations, 0)
        for operation in operations:
            store._client.meta.events.register(f"before-call.dynamodb.{operation}", self._counter(operation))

    def _counter(self, operation: str) -> Callable[..., None]:
        def count(**_kwargs: object) -> None:
            self.calls[operation] += 1

        return count


def test_dynamodb_approximate_count_does_not_scan(ddb: Callable[..., DynamoDbStore]) -> None:
    """The store-size gauge calls approximate_count() every minute on every instance: no Scan."""
    s = ddb()
    run(s.create_table())
    run(s.open())
    run(s.put_many(entry(f"g{i}@example.com") for i in range(40)))
    counter = CallCounter(s, "Scan", "DescribeTable")
    for _ in range(3):  # three gauge refreshes
        assert 0 <= run(s.approximate_count()) <= 40
    assert counter.calls == {"Scan": 0, "DescribeTable": 3}
    assert run(s.count()) == 40  # count() stays exact (a Scan) for the CLI
    assert counter.calls["Scan"] >= 1


def test_dynamodb_export_streams_scan_pages(
    ddb: Callable[..., DynamoDbStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows are written as each Scan page arrives, not after the whole table is in memory."""
    from relay.suppression.transfer import export_entries

    monkeypatch.setattr(dynamodb_module, "SCAN_PAGE_SIZE", 10)
    s = ddb()
    run(s.create_table())
    run(s.open())
    addresses = {f"e{i:03d}@example.com" for i in range(95)}
    run(s.put_many(entry(a) for a in addresses))
    out = io.StringIO()
    written_at_each_scan: list[int] = []
    s._client.meta.events.register(
        "before-call.dynamodb.Scan", lambda **_: written_at_each_scan.append(out.getvalue().count("\n"))
    )
    assert run(export_entries(s, out, fmt="jsonl")) == 95
    assert {json.loads(line)["address"] for line in out.getvalue().splitlines()} == addresses
    # ten pages; before each one, every row of the pages before it is already in the output
    assert written_at_each_scan[:10] == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]
    assert len(written_at_each_scan) <= 11  # (moto may end with an empty page)


class FlakyBatchClient:
    """Leaves the first `unprocessed` requests of every call unprocessed, `times` times."""

    def __init__(self, times: int, unprocessed: int = 2) -> None:
        self.times = times
        self.unprocessed = unprocessed
        self.calls: list[int] = []

    def batch_write_item(self, *, RequestItems: dict[str, list[object]]) -> dict[str, object]:  # noqa: N803
        requests = RequestItems[TABLE]
        self.calls.append(len(requests))
        if self.times > 0:
            self.times -= 1
            return {"UnprocessedItems": {TABLE: requests[: self.unprocessed]}}
        return {"UnprocessedItems": {}}


def test_dynamodb_batch_retries_unprocessed_items(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dynamodb_module, "BACKOFF_BASE", 0.0)
    s = DynamoDbStore(TABLE, region=REGION)
    requests = [{"PutRequest": {"Item": {"key": {"S": f"k{i}"}}}} for i in range(25)]

    client = FlakyBatchClient(times=3)
    s._write_batch(client, requests)
    assert client.calls == [25, 2, 2, 2]

    client = FlakyBatchClient(times=100)
    with pytest.raises(StoreError) as err:
        s._write_batch(client, requests)
    assert_one_line_store_error(err, "unprocessed", "run it again")
    assert len(client.calls) == dynamodb_module.BATCH_ATTEMPTS


def test_dynamodb_blank_address(ddb: Callable[..., DynamoDbStore]) -> None:
    # Unlike memory/sqlite: a DynamoDB partition key cannot be empty.
    s = ddb()
    run(s.create_table())
    run(s.open())
    with pytest.raises(StoreError, match="blank address"):
        run(s.put(entry("   ")))
    with pytest.raises(StoreError, match="blank address"):
        run(s.put_many([entry("ok@example.com"), entry("")]))
    assert run(s.count()) == 0  # nothing written: the import is checked before the first write
    assert run(s.get("")) is None
    assert run(s.delete("  ")) is False


# --- sqlite lookup cache ------------------------------------------------------------------------


def trace_selects(store: SqliteStore) -> list[str]:
    """Every SELECT on the suppression table that sqlite runs for this store, from now on."""
    statements: list[str] = []

    def install() -> None:
        store._db().set_trace_callback(
            lambda sql: statements.append(sql) if "FROM suppression WHERE key" in sql else None
        )

    run(store._run(install))
    return statements


def test_sqlite_cache_answers_repeat_lookups_without_sqlite(db_path: Path) -> None:
    store = SqliteStore(db_path, cache_entries=100)
    run(store.open())
    try:
        run(store.put(entry("gone@example.com")))
        selects = trace_selects(store)

        async def lookups() -> list[SuppressionEntry | None]:
            return [await store.get(a) for a in ["a@example.com", "GONE@example.com", "b@example.com"] * 3]

        answers = run(lookups())
        assert [a is not None for a in answers] == [False, True, False] * 3
        # The first lookup after open reads sqlite's data_version for the first time and is not cached.
        assert len(selects) == 4, selects
    finally:
        run(store.close())


def test_sqlite_cache_sees_writes_by_another_connection(db_path: Path) -> None:
    """The CLI or a second relay writes through its own connection: the cache must not hide it."""
    store = SqliteStore(db_path, cache_entries=100)

    async def scenario() -> tuple[SuppressionEntry | None, SuppressionEntry | None]:
        await store.open()
        try:
            for _ in range(3):  # cached as "not suppressed"
                assert await store.get("x@example.com") is None
            with closing(sqlite3.connect(db_path, isolation_level=None)) as other:
                other.execute(
                    "INSERT INTO suppression (key, address, reason, source, created_at) "
                    "VALUES ('x@example.com', 'x@example.com', 'MANUAL', 'cli', 1.0)"
                )
                added = await eventually(store, "x@example.com", present=True)
                other.execute("DELETE FROM suppression WHERE key = 'x@example.com'")
                removed = await eventually(store, "x@example.com", present=False)
            return added, removed
        finally:
            await store.close()

    added, removed = run(scenario())
    assert added is not None and added.reason is Reason.MANUAL and added.source == "cli"
    assert removed is None


async def eventually(store: SqliteStore, address: str, *, present: bool) -> SuppressionEntry | None:
    deadline = asyncio.get_running_loop().time() + 5.0  # CACHE_CHECK_SECONDS is 0.25
    while True:
        found = await store.get(address)
        if (found is not None) == present or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.01)


def test_sqlite_cache_is_bounded(db_path: Path) -> None:
    store = SqliteStore(db_path, cache_entries=CACHE_ENTRIES)
    run(store.open())
    try:

        async def lookups() -> None:
            for i in range(CACHE_ENTRIES * 5):
                assert await store.get(f"r{i}@example.com") is None
                assert len(store._cache) <= CACHE_ENTRIES

        run(lookups())
        assert len(store._cache) == CACHE_ENTRIES
    finally:
        run(store.close())


# --- property: behaves like a dict keyed by address_key ----------------------------------------

CASE_VARIANTS = [str, str.upper, str.lower, str.swapcase, lambda s: f"  {s}\t"]
operations = st.lists(
    st.tuples(
        st.sampled_from(["put", "get", "delete"]),
        st.integers(min_value=0, max_value=7),  # index into the address pool, so keys collide
        st.sampled_from(range(len(CASE_VARIANTS))),
        st.sampled_from(list(Reason)),
    ),
    max_size=30,
)


async def behaves_like_a_dict(
    store: SuppressionStore, pool: list[str], ops: list[tuple[str, int, int, Reason]]
) -> None:
    model: dict[str, SuppressionEntry] = {}
    for step, (op, index, variant, reason) in enumerate(ops):
        address = CASE_VARIANTS[variant](pool[index])
        key = address.strip().lower()
        if op == "put":
            e = SuppressionEntry(address=address, reason=reason, created_at=float(step))
            await store.put(e)
            model[key] = e
        elif op == "get":
            assert await store.get(address) == model.get(key)
        else:
            assert await store.delete(address) == (model.pop(key, None) is not None)
    assert await store.count() == len(model)
    assert in_key_order(store, await collect(store)) == [model[k] for k in sorted(model)]


@pytest.mark.parametrize("backend", ["memory", "sqlite", "sqlite-cached"])
@settings(max_examples=60, deadline=None)
@given(pool=st.lists(st.text(max_size=12), min_size=8, max_size=8), ops=operations)
def test_store_behaves_like_a_dict(
    backend: str, pool: list[str], ops: list[tuple[str, int, int, Reason]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = make(backend, Path(tmp))
        run(store.open())
        try:
            run(behaves_like_a_dict(store, pool, ops))
        finally:
            run(store.close())


# Fewer examples (each is a few dozen HTTP calls to moto) and no blank addresses: a DynamoDB
# partition key cannot be empty (test_dynamodb_blank_address covers that case).
@settings(max_examples=12, deadline=None)
@given(
    pool=st.lists(st.text(max_size=12).filter(lambda a: a.strip()), min_size=8, max_size=8),
    ops=operations,
)
def test_dynamodb_behaves_like_a_dict(
    moto_server: MotoServer, pool: list[str], ops: list[tuple[str, int, int, Reason]]
) -> None:
    table = f"prop-{uuid.uuid4().hex}"  # a fresh table per example, without resetting moto
    store = DynamoDbStore(table, region=REGION, endpoint_url=moto_server.endpoint_url)
    assert run(store.create_table()) is True
    run(store.open())
    try:
        run(behaves_like_a_dict(store, pool, ops))
    finally:
        run(store.close())
