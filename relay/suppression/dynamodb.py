"""DynamoDB suppression store: one list shared by several relay instances.

Table schema (create it with `ses-relay suppression create-table`, or by hand / IaC)::

    TableName    <suppression.dynamodb.table>
    KeySchema    key (HASH)           -- partition key only, no sort key
    Attributes   key          S       address_key(address): stripped, lower-cased
                 address      S       the address as given (display form)
                 reason       S       BOUNCE | COMPLAINT | MANUAL
                 source       S       manual | import | sns | sqs | ses-sync | ...
                 created_at   N       unix seconds (float)
                 feedback_id  S       only when set (None attributes are omitted)
                 detail       S       only when set
    BillingMode  PAY_PER_REQUEST

IAM actions the relay needs on the table: dynamodb:DescribeTable, GetItem, PutItem, BatchWriteItem,
DeleteItem, Scan (and CreateTable for `create-table`).

Cost model: get/put/delete are single-item calls (get is a strongly consistent read, so a write by
another instance is seen by the next RCPT). count() and iter_entries() are Scans, O(table), for the
CLI and exports, never for the SMTP path nor the store-size gauge: approximate_count() is one
DescribeTable, whose ItemCount AWS refreshes only about every six hours. iter_entries() streams
the Scan page by page (SCAN_PAGE_SIZE items), in DynamoDB's order, not sorted by key. A partition key
cannot be an empty string, so a blank address cannot be stored here (put raises StoreError;
get/delete simply find nothing).

Every boto3 call blocks, so all of them run on a dedicated thread pool (several workers, so lookups
from concurrent RCPTs do not queue behind each other); the client is built and closed on it too.
"""

from __future__ import annotations

import asyncio
import json
import math
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice
from typing import Any, TypeVar

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

from relay.backoff import Backoff
from relay.suppression.base import Reason, StoreError, SuppressionEntry, address_key

T = TypeVar("T")

MAX_WORKERS = 8  # threads (and HTTP connections) for concurrent calls
CONNECT_TIMEOUT = 5.0  # seconds
READ_TIMEOUT = 10.0  # seconds per attempt; botocore retries (standard mode) on top
MAX_ATTEMPTS = 3  # botocore attempts per call, including the first
BATCH_SIZE = 25  # BatchWriteItem limit
BATCH_ATTEMPTS = 8  # BatchWriteItem calls per chunk while DynamoDB leaves items unprocessed
BACKOFF_BASE = 0.05  # seconds; doubled per attempt, capped, equal jitter (relay.backoff)
BACKOFF_CAP = 2.0
CREATE_TIMEOUT = 300.0  # seconds to wait for a new table to become ACTIVE
CREATE_POLL = 1.0
MAX_KEY_BYTES = 2048  # DynamoDB partition key limit
SCAN_PAGE_SIZE = 1000  # items per Scan call in iter_entries: what an export holds in memory at once

CREATE_TABLE_HINT = "run `ses-relay suppression create-table`"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _describe(exc: BaseException) -> str:
    """A one-line cause for a botocore failure."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code") or "error"
        message = error.get("Message") or ""
        text = f"{exc.operation_name}: {code}" + (f": {message}" if message else "")
    elif isinstance(exc, NoCredentialsError):
        text = "no AWS credentials found (environment, shared config/profile or instance role)"
    elif isinstance(exc, NoRegionError):
        text = "no AWS region configured (set suppression.dynamodb.region or AWS_REGION)"
    else:
        text = str(exc) or type(exc).__name__
    return _one_line(text)


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _close_client_when_done(future: Future[Any]) -> None:
    """For a client being built when open() was cancelled: close it once it exists."""

    def done(f: Future[Any]) -> None:
        if not f.cancelled() and f.exception() is None:
            f.result().close()

    future.add_done_callback(done)


class DynamoDbStore:
    def __init__(self, table: str, *, region: str | None = None, endpoint_url: str | None = None) -> None:
        if not table:
            raise StoreError("the dynamodb suppression backend needs a table name")
        self._table = table
        self._region = region
        self._endpoint_url = endpoint_url
        self._executor: ThreadPoolExecutor | None = None
        self._client: Any = None  # botocore DynamoDB client; thread-safe, used from the pool
        self._open = False

    @property
    def table(self) -> str:
        return self._table

    def _fail(self, cause: BaseException | str) -> StoreError:
        text = cause if isinstance(cause, str) else _describe(cause)
        return StoreError(f"suppression store DynamoDB table {self._table!r}: {text}")

    # --- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect and check the table exists with the expected key. Raises StoreError on failure."""
        if self._open:
            return
        executor = ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="suppression-dynamodb")
        future = executor.submit(self._connect_sync)
        try:
            client = await asyncio.wrap_future(future)
        except BaseException:
            _close_client_when_done(future)  # only matters after a cancellation
            executor.shutdown(wait=False)
            raise
        self._executor = executor
        self._client = client
        self._open = True

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        client, self._client = self._client, None
        self._open = False
        if executor is None:
            return

        def shutdown() -> None:
            executor.shutdown(wait=True)  # let calls in flight finish with the client
            if client is not None:
                client.close()

        await asyncio.to_thread(shutdown)

    def healthy(self) -> bool:
        return self._open

    async def create_table(self) -> bool:
        """Create the table if it is missing and wait until it is ACTIVE; True if this call created it.

        Works on an unopened store (that is how the CLI uses it).
        """
        if self._open:
            return await self._run(self._create_table_sync)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="suppression-dynamodb-create")
        try:
            return await asyncio.wrap_future(executor.submit(self._create_table_standalone_sync))
        finally:
            executor.shutdown(wait=False)

    # --- sync side (pool threads) ------------------------------------------------------------

    def _new_client(self) -> Any:
        # A session per client: boto3's default session is not thread-safe to create clients from.
        session = boto3.session.Session()
        return session.client(
            "dynamodb",
            region_name=self._region,
            endpoint_url=self._endpoint_url,
            config=BotoConfig(
                connect_timeout=CONNECT_TIMEOUT,
                read_timeout=READ_TIMEOUT,
                retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
                max_pool_connections=MAX_WORKERS,
            ),
        )

    def _connect_sync(self) -> Any:
        try:
            client = self._new_client()
        except (BotoCoreError, ClientError, ValueError) as exc:  # ValueError: malformed endpoint_url
            raise self._fail(exc) from None
        try:
            try:
                description = client.describe_table(TableName=self._table)["Table"]
            except ClientError as exc:
                if _error_code(exc) == "ResourceNotFoundException":
                    raise self._fail(f"table does not exist; {CREATE_TABLE_HINT}") from None
                raise self._fail(exc) from None
            except BotoCoreError as exc:
                raise self._fail(exc) from None
            self._check_table(description, allow={"ACTIVE", "UPDATING"})
        except BaseException:
            client.close()
            raise
        return client

    def _check_table(self, description: dict[str, Any], *, allow: set[str]) -> None:
        status = description.get("TableStatus", "")
        if status not in allow:
            raise self._fail(f"table status is {status or 'unknown'}, not usable")
        keys = [(k.get("AttributeName"), k.get("KeyType")) for k in description.get("KeySchema", [])]
        types = {
            a.get("AttributeName"): a.get("AttributeType")
            for a in description.get("AttributeDefinitions", [])
        }
        if keys != [("key", "HASH")] or types.get("key") != "S":
            raise self._fail(
                f"table has key schema {keys}, expected only partition key 'key' of type S "
                f"(see relay/suppression/dynamodb.py)"
            )

    def _create_table_standalone_sync(self) -> bool:
        try:
            client = self._new_client()
        except (BotoCoreError, ClientError, ValueError) as exc:
            raise self._fail(exc) from None
        try:
            return self._create_table_sync(client)
        except (BotoCoreError, ClientError) as exc:
            raise self._fail(exc) from None
        finally:
            client.close()

    def _create_table_sync(self, client: Any = None) -> bool:
        client = client if client is not None else self._db()
        try:
            client.create_table(
                TableName=self._table,
                AttributeDefinitions=[{"AttributeName": "key", "AttributeType": "S"}],
                KeySchema=[{"AttributeName": "key", "KeyType": "HASH"}],
                BillingMode="PAY_PER_REQUEST",
            )
            created = True
        except ClientError as exc:
            if _error_code(exc) != "ResourceInUseException":  # exists already (or is being created)
                raise
            created = False
        deadline = time.monotonic() + CREATE_TIMEOUT
        while True:
            description = client.describe_table(TableName=self._table)["Table"]
            status = description.get("TableStatus")
            if status in ("ACTIVE", "UPDATING"):
                self._check_table(description, allow={"ACTIVE", "UPDATING"})
                return created
            if status != "CREATING":
                raise self._fail(f"table status is {status}; cannot create or use it now")
            if time.monotonic() >= deadline:
                raise self._fail(f"table still CREATING after {CREATE_TIMEOUT:.0f}s")
            time.sleep(CREATE_POLL)

    # --- plumbing --------------------------------------------------------------------------

    def _check_open(self) -> ThreadPoolExecutor:
        if not self._open or self._executor is None:
            raise self._fail("store is not open")
        return self._executor

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        executor = self._check_open()
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc) from exc

    def _db(self) -> Any:
        client = self._client
        if client is None:  # closed between the check in _run and a worker picking this up
            raise self._fail("store is not open")
        return client

    def _item(self, entry: SuppressionEntry) -> dict[str, dict[str, str]]:
        key = entry.key
        if not key:
            raise self._fail(f"cannot store a blank address ({entry.address!r})")
        if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
            raise self._fail(f"address longer than {MAX_KEY_BYTES} bytes cannot be stored")
        created_at = float(entry.created_at)
        if not math.isfinite(created_at):
            raise self._fail(f"created_at {created_at!r} for {key!r} is not a finite number")
        item = {
            "key": {"S": key},
            "address": {"S": entry.address},
            "reason": {"S": str(entry.reason)},
            "source": {"S": entry.source},
            "created_at": {"N": repr(created_at)},
        }
        if entry.feedback_id is not None:
            item["feedback_id"] = {"S": entry.feedback_id}
        if entry.detail is not None:
            item["detail"] = {"S": entry.detail}
        return item

    def _entry(self, item: dict[str, dict[str, str]]) -> SuppressionEntry:
        try:
            key = item["key"]["S"]
            return SuppressionEntry(
                address=item["address"]["S"] if "address" in item else key,
                reason=Reason(item["reason"]["S"]),
                source=item["source"]["S"] if "source" in item else "manual",
                created_at=float(item["created_at"]["N"]) if "created_at" in item else 0.0,
                feedback_id=item["feedback_id"]["S"] if "feedback_id" in item else None,
                detail=item["detail"]["S"] if "detail" in item else None,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise self._fail(f"malformed item {item.get('key')!r}: {type(exc).__name__}: {exc}") from None

    @staticmethod
    def _usable_key(key: str) -> bool:
        """Keys DynamoDB could hold; anything else cannot be on the list (and must not be sent)."""
        return bool(key) and len(key.encode("utf-8", "surrogatepass")) <= MAX_KEY_BYTES

    # --- operations ------------------------------------------------------------------------

    async def get(self, address: str) -> SuppressionEntry | None:
        key = address_key(address)
        if not self._usable_key(key):
            self._check_open()  # same open/closed contract as a real lookup
            return None
        return await self._run(self._get_sync, key)

    def _get_sync(self, key: str) -> SuppressionEntry | None:
        response = self._db().get_item(TableName=self._table, Key={"key": {"S": key}}, ConsistentRead=True)
        item = response.get("Item")
        return None if item is None else self._entry(item)

    async def put(self, entry: SuppressionEntry) -> None:
        item = self._item(entry)
        await self._run(self._put_sync, item)

    def _put_sync(self, item: dict[str, dict[str, str]]) -> None:
        self._db().put_item(TableName=self._table, Item=item)

    async def put_many(self, entries: Iterable[SuppressionEntry]) -> int:
        """Write many entries with BatchWriteItem; returns the number consumed (last duplicate wins).

        The iterable is consumed lazily on a pool thread and spooled to an anonymous temporary file,
        so memory stays bounded; nothing is written to DynamoDB until it has been read to the end
        (all or nothing if the iterable raises or holds an unstorable entry, like the other
        backends). Writing is not atomic against DynamoDB failing midway: every write is an
        idempotent upsert, so re-run the import.
        """
        return await self._run(self._put_many_sync, entries)

    def _put_many_sync(self, entries: Iterable[SuppressionEntry]) -> int:
        client = self._db()
        total = 0
        with tempfile.TemporaryFile("w+", encoding="utf-8", prefix="ses-relay-import-") as spool:
            for entry in entries:
                spool.write(json.dumps(self._item(entry), separators=(",", ":")))
                spool.write("\n")
                total += 1
            spool.seek(0)
            while lines := list(islice(spool, BATCH_SIZE)):
                # DynamoDB rejects a batch naming one key twice: keep the last of each key.
                chunk = {item["key"]["S"]: item for item in map(json.loads, lines)}
                self._write_batch(client, [{"PutRequest": {"Item": item}} for item in chunk.values()])
        return total

    def _write_batch(self, client: Any, requests: list[dict[str, Any]]) -> None:
        pending: list[dict[str, Any]] = requests
        for attempt in range(BATCH_ATTEMPTS):
            if attempt:
                time.sleep(Backoff(BACKOFF_BASE, BACKOFF_CAP, jitter=0.5).delay(attempt))
            response = client.batch_write_item(RequestItems={self._table: pending})
            pending = (response.get("UnprocessedItems") or {}).get(self._table) or []
            if not pending:
                return
        raise self._fail(
            f"BatchWriteItem left {len(pending)} items unprocessed after {BATCH_ATTEMPTS} attempts "
            "(throttled?); the import is idempotent, run it again"
        )

    async def delete(self, address: str) -> bool:
        key = address_key(address)
        if not self._usable_key(key):
            self._check_open()
            return False
        return await self._run(self._delete_sync, key)

    def _delete_sync(self, key: str) -> bool:
        response = self._db().delete_item(
            TableName=self._table, Key={"key": {"S": key}}, ReturnValues="ALL_OLD"
        )
        return bool(response.get("Attributes"))

    async def count(self) -> int:
        """A full (consistent) Scan with Select=COUNT: O(table) in time and read capacity; for the CLI."""
        return await self._run(self._count_sync)

    def _count_sync(self) -> int:
        client = self._db()
        total = 0
        start: dict[str, Any] | None = None
        while True:
            kwargs: dict[str, Any] = {"TableName": self._table, "Select": "COUNT", "ConsistentRead": True}
            if start is not None:
                kwargs["ExclusiveStartKey"] = start
            response = client.scan(**kwargs)
            total += int(response.get("Count", 0))
            start = response.get("LastEvaluatedKey")
            if not start:
                return total

    async def approximate_count(self) -> int:
        """DescribeTable's ItemCount: one cheap call, but AWS updates it only about every six hours."""
        return await self._run(self._item_count_sync)

    def _item_count_sync(self) -> int:
        return int(self._db().describe_table(TableName=self._table)["Table"].get("ItemCount", 0))

    async def iter_entries(self) -> AsyncIterator[SuppressionEntry]:
        """All entries, in DynamoDB's (hash) order: there is no order across partition keys.

        Streams: one Scan page (SCAN_PAGE_SIZE items) is held at a time, so exporting a table of
        millions of rows costs one page of memory. An entry written or deleted by another instance
        while the Scan runs may or may not be seen (DynamoDB's Scan gives no snapshot); every entry
        present throughout is yielded exactly once. Callers may modify the store while iterating.
        """
        start: dict[str, Any] | None = None
        while True:
            page, start = await self._run(self._page_sync, start)
            for entry in page:
                yield entry
            if not start:
                return

    def _page_sync(
        self, start: dict[str, Any] | None
    ) -> tuple[list[SuppressionEntry], dict[str, Any] | None]:
        kwargs: dict[str, Any] = {"TableName": self._table, "ConsistentRead": True, "Limit": SCAN_PAGE_SIZE}
        if start is not None:
            kwargs["ExclusiveStartKey"] = start
        response = self._db().scan(**kwargs)
        return [self._entry(item) for item in response.get("Items", [])], response.get("LastEvaluatedKey")
