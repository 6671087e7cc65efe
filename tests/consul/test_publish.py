"""Publisher: when the consul source hands the runtime a snapshot (leading-edge gathering)."""

from __future__ import annotations

import anyio
import pytest

from consul_sync import Snapshot
from consul_sync_consul import parse
from consul_sync_consul.publish import Publisher
from tests.consul.conftest import body
from tests.consul.helpers import DEADLINE
from tests.consul.test_state import load_web, make

pytestmark = pytest.mark.anyio


async def count_reaches(out: list[object], count: int) -> None:
    with anyio.fail_after(DEADLINE):
        while len(out) < count:
            await anyio.sleep(0.005)


async def test_a_change_after_a_quiet_interval_goes_out_at_once() -> None:
    """The interval gathers bursts; it is not a wait before every change. The interval is an
    hour and the clock is moved past it after the first publish: the change must not wait."""
    state, _ = make()
    load_web(state)
    offset = 0.0
    publisher = Publisher(
        "consul",
        state,
        lambda: True,
        interval=3600.0,
        hold_for=1.0,
        clock=lambda: anyio.current_time() + offset,
    )
    out: list[Snapshot] = []

    async def publish(snapshot: Snapshot) -> None:
        out.append(snapshot)

    async with anyio.create_task_group() as tg:
        tg.start_soon(publisher.run, publish)
        publisher.loaded.set()
        await count_reaches(out, 1)
        offset = 3601.0  # an hour of quiet
        state.set_entries("web", parse.health_service("web", body("10")).entries)
        publisher.notify()
        await count_reaches(out, 2)
        tg.cancel_scope.cancel()
    assert out[1].changed == {("network", "web")}


async def test_changes_right_after_a_publish_go_out_together_at_the_interval_end() -> None:
    state, _ = make()
    load_web(state)
    interval = 0.5
    publisher = Publisher("consul", state, lambda: True, interval=interval, hold_for=1.0)
    out: list[tuple[float, Snapshot]] = []

    async def publish(snapshot: Snapshot) -> None:
        out.append((anyio.current_time(), snapshot))

    async with anyio.create_task_group() as tg:
        tg.start_soon(publisher.run, publish)
        publisher.loaded.set()
        await count_reaches(out, 1)
        # Two changes right behind the first publish: gathered into one snapshot.
        state.set_entries("web", parse.health_service("web", body("10")).entries)
        publisher.notify()
        await anyio.sleep(0)
        state.set_entries("web", parse.health_service("web", body("09")).entries)
        publisher.notify()
        await count_reaches(out, 2)
        await anyio.sleep(interval * 2)  # a third would have come by now
        tg.cancel_scope.cancel()
    assert len(out) == 2
    assert out[1][0] - out[0][0] >= interval  # it waited for the interval's end
    assert out[1][1].changed == {("network", "web")}
