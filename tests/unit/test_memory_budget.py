from __future__ import annotations

import pytest

from relay.smtp.budget import STEP, MemoryBudget


def test_reservations_share_the_limit_and_give_back_what_they_hold():
    budget = MemoryBudget(4 * STEP)
    first, second = budget.reservation(), budget.reservation()
    assert first.cover(STEP + 1)  # rounded up to whole steps
    assert first.held == 2 * STEP and budget.in_use == 2 * STEP
    assert second.cover(2 * STEP)
    assert not second.cover(3 * STEP)  # would exceed the limit: refused, nothing changes
    assert second.held == 2 * STEP and budget.in_use == 4 * STEP
    first.release()
    first.release()  # idempotent
    assert budget.in_use == 2 * STEP
    assert second.cover(4 * STEP)
    second.release()
    assert budget.in_use == 0 and budget.peak == 4 * STEP


def test_cover_never_rounds_past_the_limit():
    budget = MemoryBudget(STEP + 10)
    reservation = budget.reservation()
    assert reservation.cover(STEP + 5)
    assert budget.in_use == STEP + 10
    assert not reservation.cover(STEP + 11)


def test_add_and_shrink_account_for_a_second_buffer():
    budget = MemoryBudget(4 * STEP)
    reservation = budget.reservation()
    assert reservation.cover(2 * STEP)
    assert reservation.add(2 * STEP)  # the copy without the Bcc header
    assert not reservation.add(1)
    reservation.shrink(2 * STEP)  # the original is freed
    assert budget.in_use == 2 * STEP
    reservation.shrink(10 * STEP)  # never below zero
    assert budget.in_use == 0 and reservation.held == 0


def test_a_budget_must_be_positive():
    with pytest.raises(ValueError):
        MemoryBudget(0)


def test_a_message_costs_its_size_and_an_eighth_for_sending_it():
    from relay.smtp.budget import held_for

    assert held_for(0) == 0
    assert held_for(8 * 1024 * 1024) == 9 * 1024 * 1024
