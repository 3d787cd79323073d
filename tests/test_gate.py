"""app.units.gate.Gate: first come first served under contention, no barging, bounded waits."""

import anyio
import pytest
from anyio import wait_all_tasks_blocked
from anyio.lowlevel import checkpoint

from app.exceptions import DatabaseBusyError
from app.units.gate import Gate

WAITERS = 8


async def _queue(
    gate: Gate, admitted: list[int], names: range, tasks: anyio.abc.TaskGroup, *, hold: bool
) -> None:
    """Start one waiter per name, each only once the one before is queued at the gate; a
    waiter that does not ``hold`` its slot passes it on at once."""

    async def waiter(name: int) -> None:
        await gate.acquire()
        admitted.append(name)
        if not hold:
            gate.release()

    for name in names:
        tasks.start_soon(waiter, name)
        await wait_all_tasks_blocked()


async def test_waiters_are_admitted_in_the_order_they_came() -> None:
    gate = Gate(capacity=2, timeout=10)
    await gate.acquire()
    await gate.acquire()  # both slots taken: everyone after this queues
    admitted: list[int] = []
    async with anyio.create_task_group() as tasks:
        await _queue(gate, admitted, range(WAITERS), tasks, hold=True)
        assert admitted == []
        for released in range(WAITERS):
            gate.release()  # each admitted waiter keeps its slot: one in per release
            await wait_all_tasks_blocked()
            assert admitted == list(range(released + 1))
    gate.release()
    gate.release()


async def test_a_newcomer_never_overtakes_a_queued_waiter() -> None:
    """A slot released while others wait goes to the first of them, not to whoever asks
    next: the releaser asking again at once, before any waiter has run, queues behind them
    all (no barging, so no waiter can be overtaken again and again until it times out)."""
    gate = Gate(capacity=1, timeout=10)
    await gate.acquire()
    admitted: list[int] = []
    async with anyio.create_task_group() as tasks:
        await _queue(gate, admitted, range(WAITERS), tasks, hold=False)
        gate.release()
        await gate.acquire()
        admitted.append(-1)
        gate.release()
    assert admitted == [*range(WAITERS), -1]


async def test_a_wait_past_the_timeout_is_database_busy_and_keeps_no_place() -> None:
    gate = Gate(capacity=1, timeout=0.05)
    await gate.acquire()
    with pytest.raises(DatabaseBusyError, match=r"within 0\.05s"):
        await gate.acquire()
    admitted: list[int] = []
    async with anyio.create_task_group() as tasks:
        await _queue(gate, admitted, range(1), tasks, hold=True)
        gate.release()  # to the waiter behind the one that gave up
    assert admitted == [0]
    gate.release()
    await gate.acquire()  # the slot came back: free at once
    gate.release()


async def test_a_free_slot_is_taken_without_waiting() -> None:
    gate = Gate(capacity=3, timeout=10)
    for _ in range(3):
        with anyio.fail_after(0):  # no wait, not even a turn of the event loop
            await gate.acquire()
    with pytest.raises(anyio.WouldBlock):
        gate._slots.acquire_nowait()
    for _ in range(3):
        gate.release()
    await checkpoint()
