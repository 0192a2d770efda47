"""The send-rate limiter (relay/ses/rate.py) on virtual time: nothing here really sleeps."""

from __future__ import annotations

import asyncio

import pytest

from relay.ses.rate import RateLimiter, Unlimited, WaitTooLong


class VirtualClock:
    """Time that moves only when the test says so: `sleep` returns once `advance` passes its wake time."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.append((self.now + seconds, future))
        await future

    async def advance(self, seconds: float) -> None:
        """Move time on, waking the sleepers due by then one by one, in order of their wake times."""
        target = self.now + seconds
        for wake, future in sorted(self._sleepers, key=lambda sleeper: sleeper[0]):
            if wake <= target + 1e-9 and not future.done():
                self.now = wake
                future.set_result(None)
                await settle()
        self._sleepers = [sleeper for sleeper in self._sleepers if not sleeper[1].done()]
        self.now = target


async def settle() -> None:
    """Let every task that can run do so (each is at most a few steps from its next wait)."""
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


def limiter(clock: VirtualClock, rate: float, max_wait: float | None = None) -> RateLimiter:
    return RateLimiter(rate, max_wait=max_wait, clock=clock, sleep=clock.sleep)


# -- the bucket ---------------------------------------------------------------------------------


def test_a_burst_of_one_seconds_worth_then_callers_wait_for_their_tokens(clock: VirtualClock):
    async def scenario() -> tuple[float, float]:
        bucket = limiter(clock, 2)
        assert [await bucket.acquire(), await bucket.acquire()] == [0.0, 0.0]
        third = asyncio.create_task(bucket.acquire())
        fourth = asyncio.create_task(bucket.acquire())
        await settle()
        assert clock.sleeps == [pytest.approx(0.5), pytest.approx(1.0)]
        await clock.advance(1.0)
        return await third, await fourth

    assert asyncio.run(scenario()) == (pytest.approx(0.5), pytest.approx(1.0))


def test_the_bucket_refills_with_time(clock: VirtualClock):
    async def scenario() -> list[float]:
        bucket = limiter(clock, 2)
        waits = [await bucket.acquire(), await bucket.acquire()]
        clock.now += 1.0  # a second later the bucket is full again (capacity 2)
        return waits + [await bucket.acquire(), await bucket.acquire()]

    assert asyncio.run(scenario()) == [0.0] * 4
    assert clock.sleeps == []


def test_concurrent_callers_are_served_in_arrival_order(clock: VirtualClock):
    async def scenario() -> list[tuple[int, float]]:
        bucket = limiter(clock, 1)
        done: list[tuple[int, float]] = []

        async def one(index: int) -> None:
            done.append((index, await bucket.acquire()))

        tasks = [asyncio.create_task(one(index)) for index in range(4)]
        await settle()
        await clock.advance(3.0)
        await asyncio.gather(*tasks)
        return done

    done = asyncio.run(scenario())
    assert [index for index, _ in done] == [0, 1, 2, 3]
    assert [wait for _, wait in done] == [0.0, pytest.approx(1.0), pytest.approx(2.0), pytest.approx(3.0)]


def test_fractional_rate_and_validation(clock: VirtualClock):
    async def scenario() -> list[float]:
        bucket = limiter(clock, 0.5)
        first = await bucket.acquire()
        second = asyncio.create_task(bucket.acquire())
        await settle()
        await clock.advance(2.0)
        return [first, await second]

    assert asyncio.run(scenario()) == [0.0, pytest.approx(2.0)]
    with pytest.raises(ValueError):
        RateLimiter(0)
    with pytest.raises(ValueError):
        RateLimiter(1, max_wait=-1)
    with pytest.raises(ValueError):
        asyncio.run(RateLimiter(1).acquire(0))


def test_a_cost_counts_as_that_many_sends(clock: VirtualClock):
    async def scenario() -> list[float]:
        bucket = limiter(clock, 2)
        assert await bucket.acquire(2) == 0.0  # the whole burst
        waiter = asyncio.create_task(bucket.acquire())
        await settle()
        assert clock.sleeps == [pytest.approx(0.5)]
        await clock.advance(10.0)  # the bucket is full again
        await waiter
        # A cost above the burst goes once the bucket is full and leaves it owing: 3 - 2 + 1 tokens.
        assert await bucket.acquire(3) == 0.0
        late = asyncio.create_task(bucket.acquire())
        await settle()
        await clock.advance(1.0)
        return [await late]

    assert asyncio.run(scenario()) == [pytest.approx(1.0)]
    assert asyncio.run(Unlimited().acquire(50)) == 0.0


# -- the bound on waiting -----------------------------------------------------------------------


def test_a_caller_whose_turn_is_past_max_wait_is_refused_at_once_and_reserves_nothing(clock: VirtualClock):
    async def scenario() -> None:
        bucket = limiter(clock, 1, max_wait=1.5)
        assert await bucket.acquire() == 0.0
        second = asyncio.create_task(bucket.acquire())  # due in 1 s: waits
        await settle()
        assert clock.sleeps == [pytest.approx(1.0)]
        for _ in range(3):  # due in 2 s each: refused, without sleeping and without moving the clock
            with pytest.raises(WaitTooLong) as refused:
                await bucket.acquire()
            assert refused.value.wait == pytest.approx(2.0)
            assert refused.value.max_wait == 1.5
        assert clock.sleeps == [pytest.approx(1.0)]
        assert clock.now == 1000.0
        await clock.advance(1.0)
        assert await second == pytest.approx(1.0)
        # The refused callers took no tokens: the next caller's turn is one interval away, not four.
        third = asyncio.create_task(bucket.acquire())
        await settle()
        assert clock.sleeps[-1] == pytest.approx(1.0)
        await clock.advance(1.0)
        assert await third == pytest.approx(1.0)

    asyncio.run(scenario())


def test_a_wait_of_exactly_max_wait_is_allowed_and_zero_means_only_the_burst(clock: VirtualClock):
    async def scenario() -> None:
        bucket = limiter(clock, 1, max_wait=1.0)
        await bucket.acquire()
        waiter = asyncio.create_task(bucket.acquire())
        await settle()
        await clock.advance(1.0)
        assert await waiter == pytest.approx(1.0)

        no_wait = limiter(clock, 2, max_wait=0)
        clock.now += 10
        assert [await no_wait.acquire(), await no_wait.acquire()] == [0.0, 0.0]
        with pytest.raises(WaitTooLong):
            await no_wait.acquire()

    asyncio.run(scenario())


def test_a_cancelled_waiter_gives_its_turn_back(clock: VirtualClock):
    async def scenario() -> None:
        bucket = limiter(clock, 1, max_wait=2.5)
        await bucket.acquire()
        second = asyncio.create_task(bucket.acquire())  # due in 1 s
        third = asyncio.create_task(bucket.acquire())  # due in 2 s
        await settle()
        third.cancel()  # e.g. the SMTP client hung up, or the relay is stopping
        with pytest.raises(asyncio.CancelledError):
            await third
        # Its turn is free again: the next caller gets it (2 s), not the one after (3 s, refused).
        fourth = asyncio.create_task(bucket.acquire())
        await settle()
        assert clock.sleeps == [pytest.approx(1.0), pytest.approx(2.0), pytest.approx(2.0)]
        second.cancel()  # a waiter in the middle: later turns stand, and the bucket owes nothing
        with pytest.raises(asyncio.CancelledError):
            await second
        await clock.advance(2.0)
        assert await fourth == pytest.approx(2.0)
        await clock.advance(1.0)  # 3 s after the start: without the refunds this caller would wait
        assert await bucket.acquire() == 0.0

    asyncio.run(scenario())


def test_a_throttle_lowers_the_rate_once_per_settle_time_and_it_recovers_while_ses_accepts():
    clock = [100.0]
    limiter = RateLimiter(10, clock=lambda: clock[0])
    limiter.throttled()
    assert limiter.rate == 7.5
    limiter.throttled()  # a 429 for a send already in flight when the first came: no second cut
    assert limiter.rate == 7.5
    clock[0] += RateLimiter.SETTLE
    limiter.throttled()  # a new 429 at the lower rate: the rate was still too high
    assert limiter.rate == 7.5 * 0.75
    limiter.succeeded()  # no time has passed: no recovery yet
    assert limiter.rate == 7.5 * 0.75
    clock[0] += 2
    limiter.succeeded()  # 2 s at 10 % of the ceiling per second
    assert limiter.rate == pytest.approx(7.5 * 0.75 + 2)
    clock[0] += 100
    limiter.succeeded()
    assert limiter.rate == 10  # never above the ceiling
    for _ in range(40):
        clock[0] += RateLimiter.SETTLE
        limiter.throttled()
    assert limiter.rate == RateLimiter.FLOOR


def test_a_lower_account_rate_applies_at_once():
    limiter = RateLimiter(10, clock=lambda: 0.0)
    limiter.set_ceiling(4)
    assert (limiter.rate, limiter.ceiling) == (4, 4)
    limiter.set_ceiling(8)
    assert (limiter.rate, limiter.ceiling) == (4, 8)  # up only gradually, through succeeded()
