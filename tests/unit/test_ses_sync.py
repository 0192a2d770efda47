"""SES suppression-list sync (relay/suppression/ses_sync.py) against FakeSES over HTTP with real boto3."""

from __future__ import annotations

import asyncio
import datetime
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import botocore.config
import botocore.exceptions
import pytest

from relay.suppression.base import Reason, StoreError
from relay.suppression.memory import MemoryStore
from relay.suppression.ses_sync import (
    SyncError,
    push_to_ses,
    sesv2_client_factory,
    sync_from_ses,
)
from relay.suppression.sqlite import SqliteStore
from testkit.boto import sesv2_client
from testkit.fake_ses import SUPPRESSION_PATH, FakeSES, Fault

BASE_TIME = 1_700_000_000.0


def factory(fake: FakeSES):
    return lambda: sesv2_client(fake)


def populate(fake: FakeSES, n: int) -> dict[str, tuple[str, float]]:
    expected = {
        f"user{i:05d}@example.com": ("COMPLAINT" if i % 4 == 0 else "BOUNCE", BASE_TIME + i)
        for i in range(n)
    }
    fake.suppressed.update(expected)
    return expected


def list_requests(fake: FakeSES):
    return [r for r in fake.requests if r.path == SUPPRESSION_PATH and r.method == "GET"]


async def opened(store):
    await store.open()
    return store


async def entries(store):
    return {e.address: e async for e in store.iter_entries()}


@pytest.fixture
def fake() -> Iterator[FakeSES]:
    with FakeSES() as f:
        yield f


@pytest.fixture
def fast_fake() -> Iterator[FakeSES]:
    """No suppression-list throttle: for tests where pacing is not what is tested."""
    with FakeSES(suppression_rate=None) as f:
        yield f


def test_sync_pages_paced_at_one_per_second(fake: FakeSES, tmp_path: Path) -> None:
    expected = populate(fake, 2500)
    state = tmp_path / "ses-sync.state"
    seen: list[int] = []

    async def scenario():
        store = await opened(SqliteStore(tmp_path / "s.db"))
        try:
            started = time.monotonic()
            result = await sync_from_ses(store, factory(fake), state_path=state, rate=1.0, progress=seen.append)
            return result, time.monotonic() - started, await entries(store)
        finally:
            await store.close()

    result, elapsed, stored = asyncio.run(scenario())
    assert (result.pages, result.imported, result.resumed) == (3, 2500, False)
    assert seen == [1000, 2000, 2500]
    assert elapsed >= 2.0  # three requests, at least a second apart
    requests = list_requests(fake)
    assert [r.outcome for r in requests] == ["ok", "ok", "ok"]  # paced itself: the fake never said 429
    assert [r.query.get("PageSize") for r in requests] == [["1000"]] * 3
    assert "NextToken" not in requests[0].query and "NextToken" in requests[1].query
    assert len(stored) == 2500
    for address, (reason, stamp) in expected.items():
        entry = stored[address]
        assert (entry.reason.value, entry.created_at, entry.source) == (reason, stamp, "ses-sync")
    assert not state.exists()
    assert not state.with_name(state.name + ".tmp").exists()


class FailingStore(MemoryStore):
    """Fails to write the n-th page."""

    def __init__(self, fail_on: int) -> None:
        super().__init__()
        self.fail_on = fail_on
        self.calls = 0

    async def put_many(self, entries):
        self.calls += 1
        if self.calls == self.fail_on:
            raise StoreError("disk full")
        return await super().put_many(entries)


def test_resumes_from_the_saved_token(fast_fake: FakeSES, tmp_path: Path) -> None:
    populate(fast_fake, 2500)
    state = tmp_path / "state" / "ses-sync.state"

    async def scenario():
        store = await opened(FailingStore(fail_on=3))
        with pytest.raises(StoreError):
            await sync_from_ses(store, factory(fast_fake), state_path=state, rate=50)
        saved = json.loads(state.read_text())
        assert await store.count() == 2000  # pages 1 and 2 were committed
        first_run = len(list_requests(fast_fake))
        store.fail_on = None
        result = await sync_from_ses(store, factory(fast_fake), state_path=state, rate=50)
        return saved, first_run, result, await store.count()

    saved, first_run, result, count = asyncio.run(scenario())
    assert first_run == 3
    requests = list_requests(fast_fake)
    assert len(requests) == 4
    # The second run's only request continued from the token saved after page 2.
    assert requests[3].query["NextToken"] == [saved["next_token"]] == requests[2].query["NextToken"]
    assert (result.pages, result.imported, result.resumed) == (1, 500, True)
    assert count == 2500
    assert not state.exists()


def test_expired_saved_token_starts_over(fast_fake: FakeSES, tmp_path: Path) -> None:
    populate(fast_fake, 30)
    state = tmp_path / "ses-sync.state"
    state.write_text(json.dumps({"version": 1, "next_token": "not-a-token!"}))

    async def scenario():
        store = await opened(MemoryStore())
        result = await sync_from_ses(store, factory(fast_fake), state_path=state, rate=50, page_size=10)
        return result, await store.count()

    result, count = asyncio.run(scenario())
    assert (result.pages, result.imported, count, result.resumed) == (3, 30, 30, True)
    assert [r.outcome for r in list_requests(fast_fake)] == ["BadRequestException", "ok", "ok", "ok"]
    assert not state.exists()


def test_corrupt_state_file_is_ignored(fast_fake: FakeSES, tmp_path: Path) -> None:
    populate(fast_fake, 5)
    state = tmp_path / "ses-sync.state"
    state.write_text("{half")

    async def scenario():
        store = await opened(MemoryStore())
        return await sync_from_ses(store, factory(fast_fake), state_path=state, rate=50)

    result = asyncio.run(scenario())
    assert (result.pages, result.imported, result.resumed) == (1, 5, False)


def test_forced_throttle_is_retried(fast_fake: FakeSES) -> None:
    populate(fast_fake, 25)
    fast_fake.queue(Fault.error("TooManyRequestsException"), Fault.error("TooManyRequestsException"))

    async def scenario():
        store = await opened(MemoryStore())
        result = await sync_from_ses(
            store, factory(fast_fake), state_path=None, rate=50, page_size=10, backoff=0.05
        )
        return result, await store.count()

    result, count = asyncio.run(scenario())
    assert (result.pages, count) == (3, 25)
    assert [r.outcome for r in list_requests(fast_fake)] == [
        "TooManyRequestsException", "TooManyRequestsException", "ok", "ok", "ok",
    ]


def test_real_throttle_backs_off_when_paced_too_fast(fake: FakeSES) -> None:
    """rate=100 against SES's 1 req/s: the second page is throttled, backoff brings it through."""
    populate(fake, 15)

    async def scenario():
        store = await opened(MemoryStore())
        result = await sync_from_ses(store, factory(fake), state_path=None, rate=100, page_size=10, backoff=0.5)
        return result, await store.count()

    result, count = asyncio.run(scenario())
    assert (result.pages, count) == (2, 15)
    outcomes = [r.outcome for r in list_requests(fake)]
    assert outcomes[0] == "ok" and outcomes[-1] == "ok"
    assert "TooManyRequestsException" in outcomes


def test_gives_up_after_max_tries_and_keeps_state(fast_fake: FakeSES, tmp_path: Path) -> None:
    populate(fast_fake, 25)
    state = tmp_path / "ses-sync.state"

    async def scenario():
        store = await opened(MemoryStore())
        # page 1 ok, then page 2 throttled three times in a row
        fast_fake.queue(Fault.delay(0), *[Fault.error("TooManyRequestsException")] * 3)
        with pytest.raises(SyncError) as excinfo:
            await sync_from_ses(
                store, factory(fast_fake), state_path=state, rate=50, page_size=10, max_tries=3, backoff=0.01
            )
        return excinfo.value, await store.count()

    error, count = asyncio.run(scenario())
    assert error.code == "TooManyRequestsException"
    assert count == 10
    assert state.exists()  # a rerun continues from page 2
    assert len(list_requests(fast_fake)) == 4


def test_non_retryable_error_fails_at_once(fast_fake: FakeSES) -> None:
    fast_fake.queue(Fault.error("AccessDeniedException"))

    async def scenario():
        store = await opened(MemoryStore())
        await sync_from_ses(store, factory(fast_fake), state_path=None, rate=50)

    with pytest.raises(SyncError, match="AccessDeniedException"):
        asyncio.run(scenario())
    assert len(list_requests(fast_fake)) == 1


def test_server_error_and_reset_are_retried(fast_fake: FakeSES) -> None:
    populate(fast_fake, 3)
    fast_fake.queue(Fault.error("InternalFailure"), Fault.reset())

    async def scenario():
        store = await opened(MemoryStore())
        return await sync_from_ses(store, factory(fast_fake), state_path=None, rate=50, backoff=0.01)

    assert asyncio.run(scenario()).imported == 3
    assert [r.outcome for r in list_requests(fast_fake)] == ["InternalFailure", "reset", "ok"]


def test_empty_list(fast_fake: FakeSES, tmp_path: Path) -> None:
    async def scenario():
        store = await opened(MemoryStore())
        return await sync_from_ses(store, factory(fast_fake), state_path=tmp_path / "s", rate=50)

    result = asyncio.run(scenario())
    assert (result.pages, result.imported) == (1, 0)


def test_boto3_never_runs_on_the_event_loop(fast_fake: FakeSES) -> None:
    populate(fast_fake, 3)
    threads: list[int] = []

    class Spy:
        def __init__(self) -> None:
            threads.append(threading.get_ident())
            self._client = sesv2_client(fast_fake)

        def list_suppressed_destinations(self, **kwargs):
            threads.append(threading.get_ident())
            return self._client.list_suppressed_destinations(**kwargs)

    async def scenario():
        store = await opened(MemoryStore())
        await sync_from_ses(store, Spy, state_path=None, rate=50)
        return threading.get_ident()

    loop_thread = asyncio.run(scenario())
    assert len(threads) == 2 and loop_thread not in threads


def test_argument_checks(fast_fake: FakeSES) -> None:
    async def scenario(**kwargs):
        await sync_from_ses(await opened(MemoryStore()), factory(fast_fake), state_path=None, **kwargs)

    for kwargs in ({"rate": 0}, {"page_size": 1001}, {"max_tries": 0}):
        with pytest.raises(ValueError):
            asyncio.run(scenario(**kwargs))


# --- push --------------------------------------------------------------------------------------


def test_push_then_list_and_sync(fast_fake: FakeSES) -> None:
    async def scenario():
        await push_to_ses(factory(fast_fake), "pushed+x/y@example.com", "complaint")
        store = await opened(MemoryStore())
        await sync_from_ses(store, factory(fast_fake), state_path=None, rate=50)
        return await entries(store)

    stored = asyncio.run(scenario())
    assert fast_fake.suppressed["pushed+x/y@example.com"][0] == "COMPLAINT"
    assert stored["pushed+x/y@example.com"].reason is Reason.COMPLAINT
    put = [r for r in fast_fake.requests if r.method == "PUT"]
    assert put[0].body == {"EmailAddress": "pushed+x/y@example.com", "Reason": "COMPLAINT"}
    client = sesv2_client(fast_fake)
    got = client.get_suppressed_destination(EmailAddress="pushed+x/y@example.com")["SuppressedDestination"]
    assert got["Reason"] == "COMPLAINT" and isinstance(got["LastUpdateTime"], datetime.datetime)


def test_push_rejects_manual() -> None:
    with pytest.raises(ValueError, match="BOUNCE or COMPLAINT"):
        asyncio.run(push_to_ses(lambda: None, "a@example.com", "MANUAL"))


def test_push_retries_throttling(fast_fake: FakeSES) -> None:
    fast_fake.queue(Fault.error("TooManyRequestsException"))
    asyncio.run(push_to_ses(factory(fast_fake), "a@example.com", "BOUNCE", backoff=0.01))
    assert "a@example.com" in fast_fake.suppressed


def test_client_factory_for_config(fast_fake: FakeSES) -> None:
    client = sesv2_client_factory("eu-west-1", fast_fake.endpoint_url)()
    assert client.meta.region_name == "eu-west-1"
    assert client.meta.endpoint_url == fast_fake.endpoint_url
    fast_fake.suppressed["a@example.com"] = ("BOUNCE", BASE_TIME)
    assert len(client.list_suppressed_destinations()["SuppressedDestinationSummaries"]) == 1


# --- the fake's suppression-list routes --------------------------------------------------------


def test_fake_throttles_suppression_routes_separately(fake: FakeSES) -> None:
    client = sesv2_client(fake)
    client.list_suppressed_destinations()
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        client.list_suppressed_destinations()
    assert excinfo.value.response["Error"]["Code"] == "TooManyRequestsException"
    assert excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    # SendEmail has its own bucket (unlimited here).
    client.send_email(
        FromEmailAddress="s@example.com",
        Destination={"ToAddresses": ["r@example.org"]},
        Content={"Raw": {"Data": b"Subject: x\r\n\r\nhi"}},
    )
    time.sleep(1.05)
    client.list_suppressed_destinations()


def test_fake_routes_shapes(fast_fake: FakeSES) -> None:
    client = sesv2_client(fast_fake)
    fast_fake.suppressed.update({"b@example.com": ("BOUNCE", BASE_TIME), "c@example.com": ("COMPLAINT", BASE_TIME + 10)})
    page = client.list_suppressed_destinations(Reasons=["COMPLAINT"])
    assert [s["EmailAddress"] for s in page["SuppressedDestinationSummaries"]] == ["c@example.com"]
    page = client.list_suppressed_destinations(
        StartDate=datetime.datetime.fromtimestamp(BASE_TIME + 5, datetime.UTC)
    )
    assert [s["EmailAddress"] for s in page["SuppressedDestinationSummaries"]] == ["c@example.com"]
    summary = client.list_suppressed_destinations(PageSize=1)["SuppressedDestinationSummaries"][0]
    assert summary["LastUpdateTime"].timestamp() == BASE_TIME
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        client.get_suppressed_destination(EmailAddress="nobody@example.com")
    assert excinfo.value.response["Error"]["Code"] == "NotFoundException"
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        client.put_suppressed_destination(EmailAddress="x@example.com", Reason="MANUAL")
    assert excinfo.value.response["Error"]["Code"] == "BadRequestException"
    with pytest.raises(botocore.exceptions.ClientError) as excinfo:
        client.list_suppressed_destinations(PageSize=1001)
    assert excinfo.value.response["Error"]["Code"] == "BadRequestException"
    client.delete_suppressed_destination(EmailAddress="b@example.com")
    assert set(fast_fake.suppressed) == {"c@example.com"}
