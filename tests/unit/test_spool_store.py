from __future__ import annotations

import asyncio
import mmap

import pytest

from relay.spool.store import DEAD, DEFERRED, INLINE_MAX, QUEUED, SpoolError, SqliteSpool, chunked


def run(coro):
    return asyncio.run(coro)


async def opened(path, **kwargs) -> SqliteSpool:
    spool = SqliteSpool(path, **kwargs)
    await spool.open()
    return spool


async def put(spool: SqliteSpool, queue_id: str, raw: bytes = b"Subject: x\r\n\r\nx\r\n", recipients=None):
    await spool.put(queue_id, raw, mail_from="a@example.com", recipients=recipients or ["b@example.org"],
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
        (entry,) = await spool.due(limit=10, exclude=set())
        assert [len(c.recipients) for c in entry.chunks] == [50, 50, 20]
        assert entry.recipients == recipients and entry.params["tags"] == {"k": "v"}
        await spool.chunk_sent("m1", 0, "ses-1")
        await spool.defer("m1", delay=3600, error="451 x", possible_duplicate=True)
        assert await spool.due(limit=10, exclude=set()) == []  # not due for an hour
        entry, attempts = await spool.get("m1")
        assert entry.state == DEFERRED and entry.attempts == 1 and entry.possible_duplicate
        assert entry.chunks[0].ses_message_id == "ses-1" and entry.chunks[1].ses_message_id is None
        assert [a["outcome"] for a in attempts] == ["sent", "deferred"]
        assert await spool.set_state(["m1"], QUEUED, only=(DEFERRED,)) == 1  # queue retry
        assert [e.id for e in await spool.due(limit=10, exclude=set())] == ["m1"]
        assert await spool.due(limit=10, exclude={"m1"}) == []  # in flight: not handed out twice
        await spool.kill("m1", reason="554 rejected")
        assert (await spool.counts())[DEAD] == 1
        assert await spool.due(limit=10, exclude=set()) == []
        assert await spool.delete(state=DEAD) == 1
        assert sum((await spool.counts()).values()) == 0
        await spool.close()

    run(main())


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
        settings = await spool._run(
            lambda: (spool._db.execute("PRAGMA journal_mode").fetchone()[0],
                     spool._db.execute("PRAGMA synchronous").fetchone()[0])
        )
        await spool.close()
        return settings

    assert run(main()) == ("wal", 2)  # 2: FULL


def test_chunked():
    assert chunked([]) == []
    assert [len(c) for c in chunked(list(range(101)))] == [50, 50, 1]
