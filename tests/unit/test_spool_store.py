from __future__ import annotations

import asyncio
import mmap

import pytest

from relay.spool.store import DEAD, DEFERRED, HELD, INLINE_MAX, QUEUED, SpoolError, SqliteSpool, chunked


def run(coro):
    return asyncio.run(coro)


async def opened(path, **kwargs) -> SqliteSpool:
    spool = SqliteSpool(path, **kwargs)
    await spool.open()
    return spool


async def put(spool: SqliteSpool, queue_id: str, raw: bytes = b"Subject: x\r\n\r\nx\r\n", recipients=None):
    return await spool.put(queue_id, raw, mail_from="a@example.com", recipients=recipients or ["b@example.org"],
                    params={"configuration_set": None, "tags": {"k": "v"}}, message_id="<m@x>")


def test_concurrent_puts_share_commits_and_all_survive_a_reopen(tmp_path):
    async def main():
        spool = await opened(tmp_path)
        await asyncio.gather(*(put(spool, f"id{i:03d}") for i in range(200)))
        commits = spool.commits
        await spool.close()
        again = await opened(tmp_path)
        counts = await again.counts()
        await again.close()
        return commits, counts

    commits, counts = run(main())
    assert counts[QUEUED] == 200
    assert commits < 200  # group commit: transactions finishing together shared an fsync


def test_a_large_body_is_a_file_read_back_through_mmap_and_removed_with_the_message(tmp_path):
    big = b"Subject: big\r\n\r\n" + b"x" * (INLINE_MAX + 10)

    async def main():
        spool = await opened(tmp_path)
        await put(spool, "big", big)
        assert (tmp_path / "bodies" / "big").read_bytes() == big
        body = await spool.body("big")
        assert isinstance(body, mmap.mmap) and body[:] == big
        body.close()
        small = await opened(tmp_path / "other")
        await put(small, "small")
        assert await small.body("small") == b"Subject: x\r\n\r\nx\r\n"
        assert not any((tmp_path / "other" / "bodies").iterdir())  # inline
        await small.close()
        assert await spool.delete(["big"]) == 1
        assert not (tmp_path / "bodies" / "big").exists()
        await put(spool, "big2", big)
        await spool.finish("big2", has_file=True)  # delivered: the file goes with its row
        assert not (tmp_path / "bodies" / "big2").exists()
        assert sum((await spool.counts()).values()) == 0
        await spool.close()

    run(main())


def test_a_body_file_without_its_row_is_removed_at_open(tmp_path):
    """A crash between writing a body file and committing its row: the client never got 250."""

    async def main():
        spool = await opened(tmp_path)
        await spool.close()
        (tmp_path / "bodies" / "orphan").write_bytes(b"x")
        spool = await opened(tmp_path)
        await spool.close()

    run(main())
    assert not (tmp_path / "bodies" / "orphan").exists()


def test_chunks_defer_kill_and_admin_states(tmp_path):
    async def main():
        spool = await opened(tmp_path)
        recipients = [f"r{i}@example.org" for i in range(120)]
        await put(spool, "m1", recipients=recipients)
        (ready,) = await spool.due(limit=10, exclude=set())
        entry = ready.entry
        assert ready.body == b"Subject: x\r\n\r\nx\r\n"
        assert [len(c.recipients) for c in entry.chunks] == [50, 50, 20]
        assert entry.recipients == recipients and entry.params["tags"] == {"k": "v"}
        assert await spool.chunk_sent("m1", 0, "ses-1") == QUEUED
        await spool.defer("m1", delay=3600, error="451 x", possible_duplicate=True)
        assert await spool.due(limit=10, exclude=set()) == []  # not due for an hour
        entry, attempts = await spool.get("m1")
        assert entry.state == DEFERRED and entry.attempts == 1 and entry.possible_duplicate
        assert entry.chunks[0].ses_message_id == "ses-1" and entry.chunks[1].ses_message_id is None
        assert [a["outcome"] for a in attempts] == ["sent", "deferred"]
        assert await spool.set_state(["m1"], QUEUED, only=(DEFERRED,)) == 1  # queue retry
        assert [r.entry.id for r in await spool.due(limit=10, exclude=set())] == ["m1"]
        assert await spool.due(limit=10, exclude={"m1"}) == []  # in flight: not handed out twice
        await spool.kill("m1", reason="554 rejected")
        assert (await spool.counts())[DEAD] == 1
        assert await spool.due(limit=10, exclude=set()) == []
        assert await spool.delete(state=DEAD) == 1
        assert sum((await spool.counts()).values()) == 0
        await spool.close()

    run(main())


def test_put_returns_the_committed_entry_with_an_inline_body_for_the_hand_off(tmp_path):
    async def main():
        spool = await opened(tmp_path)
        small = await put(spool, "small", recipients=[f"r{i}@example.org" for i in range(60)])
        big = await put(spool, "big", b"Subject: big\r\n\r\n" + b"x" * (INLINE_MAX + 1))
        (from_db,) = [r for r in await spool.due(limit=10, exclude=set()) if r.entry.id == "small"]
        await spool.close()
        return small, big, from_db

    small, big, from_db = run(main())
    assert big is None  # a body in a file is read back by the worker, not held in memory
    assert small.body == from_db.body == b"Subject: x\r\n\r\nx\r\n"
    assert small.entry.as_dict() | {"created": 0, "next_attempt": 0} == (
        from_db.entry.as_dict() | {"created": 0, "next_attempt": 0}
    )


def test_finishes_share_commits_and_leave_the_spool(tmp_path):
    async def main():
        spool = await opened(tmp_path)
        await asyncio.gather(*(put(spool, f"id{i:03d}") for i in range(100)))
        before = spool.commits
        # Delivered messages leave while new ones arrive: the deletes ride along in the same commits.
        await asyncio.gather(
            *(spool.finish(f"id{i:03d}", has_file=False) for i in range(100)),
            *(put(spool, f"new{i:03d}") for i in range(50)),
        )
        new_commits = spool.commits - before
        await spool.close()
        again = await opened(tmp_path)
        left = [e.id for e in await again.entries()]
        await again.close()
        return new_commits, left

    new_commits, left = run(main())
    assert left == [f"new{i:03d}" for i in range(50)]
    assert new_commits < 50


def test_a_failed_insert_does_not_fail_the_deletes_that_shared_its_commit(tmp_path):
    async def main():
        spool = await opened(tmp_path)
        await put(spool, "sent")
        await put(spool, "dup")
        # Queued together, so one commit carries both; the insert clashes with the existing row.
        results = await asyncio.gather(spool.finish("sent", has_file=False), put(spool, "dup"),
                                       return_exceptions=True)
        left = [e.id for e in await spool.entries()]
        await spool.close()
        return results, left

    (finished, clash), left = run(main())
    assert finished is None and isinstance(clash, SpoolError)
    assert left == ["dup"]  # the delivered message is gone all the same


def test_chunk_sent_says_when_the_queue_cli_held_or_deleted_the_message(tmp_path):
    async def main():
        spool = await opened(tmp_path)
        recipients = [f"r{i}@example.org" for i in range(120)]
        await put(spool, "held", recipients=recipients)
        await put(spool, "gone", recipients=recipients)
        assert await spool.move(["held"], HELD, only=(QUEUED,)) == ["held"]
        assert await spool.remove(["gone"]) == ["gone"]
        states = (await spool.chunk_sent("held", 0, "ses-1"), await spool.chunk_sent("gone", 0, "ses-2"))
        entry, _ = await spool.get("held")
        await spool.close()
        return states, entry

    states, entry = run(main())
    assert states == (HELD, None)
    assert entry.chunks[0].ses_message_id == "ses-1"  # recorded all the same: never sent again


def test_too_little_free_space_refuses_before_writing(tmp_path):
    async def main():
        spool = await opened(tmp_path, min_free_bytes=10**18)
        with pytest.raises(SpoolError, match="min_free_bytes"):
            await put(spool, "m1")
        assert sum((await spool.counts()).values()) == 0
        await spool.close()

    run(main())


def test_a_failed_commit_fails_every_put_in_its_batch(tmp_path):
    async def main():
        spool = await opened(tmp_path)
        await put(spool, "dup")
        with pytest.raises(SpoolError):
            await put(spool, "dup")  # primary key clash: the commit fails
        await spool.close()

    run(main())


def test_commits_are_full_sync_in_wal_mode(tmp_path):
    """The 250 relies on a commit being on disk when it returns."""

    async def main():
        spool = await opened(tmp_path)
        read = lambda: (spool._db.execute("PRAGMA journal_mode").fetchone()[0],  # noqa: E731
                        spool._db.execute("PRAGMA synchronous").fetchone()[0])
        settings = [await spool._run(read)]
        await put(spool, "m1")
        await spool.finish("m1", has_file=False)  # a commit of deletes only runs with NORMAL...
        settings.append(await spool._run(read))  # ...and FULL is back for every other write
        await spool.close()
        return settings

    assert run(main()) == [("wal", 2), ("wal", 2)]  # 2: FULL


def test_chunked():
    assert chunked([]) == []
    assert [len(c) for c in chunked(list(range(101)))] == [50, 50, 1]
