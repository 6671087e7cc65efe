"""ACLs: an empty answer is not "everything deregistered"; a bad token is
named by where it comes from, never shown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from consul_sync import Duration
from consul_sync.config import Settings
from consul_sync.metrics import Metrics
from consul_sync.plugins import make_plugin_manager
from consul_sync.runtime import Runtime
from tests.consul.helpers import DEADLINE, captured, counter, make_source, running
from tests.consul.sinks import MemorySink
from tests.fakes.consul_double import ConsulDouble

pytestmark = pytest.mark.anyio

TAG = ["kubernetes"]
READ_RULES = 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }'
WEB_ONLY_RULES = 'service "web" { policy = "read" }\nnode_prefix "" { policy = "read" }'


@pytest.fixture
def consul() -> Iterator[ConsulDouble]:
    with ConsulDouble(acl=True, management_token="management-secret-0001", seed=5) as double:
        double.create_policy("read-only", READ_RULES)
        double.create_policy("web-only", WEB_ONLY_RULES)
        for name, address in (("web", "10.2.0.11"), ("db", "10.2.0.20"), ("api", "10.2.0.30")):
            double.register(name, service_id=f"{name}-1", address=address, port=8080, tags=TAG,
                            status="passing")  # fmt: skip
        yield double


async def test_read_token_sees_the_tagged_services(consul: ConsulDouble) -> None:
    token = consul.create_token(["read-only"])
    async with running(make_source(consul.url, token=token)) as seen:
        assert seen.last.complete
        assert seen.names() == {"web", "db", "api"}


async def test_empty_answer_is_reported_and_deletes_nothing(
    consul: ConsulDouble, tmp_path: Path
) -> None:
    read = consul.create_token(["read-only"])
    none = consul.create_token([])
    token_file = tmp_path / "token"
    token_file.write_text(read)
    metrics = Metrics()
    source = make_source(consul.url, metrics=metrics, token_file=str(token_file))
    sink = MemorySink()
    settings = Settings(coalesce_window=Duration(0.01))
    runtime = Runtime(settings, [source], [sink], make_plugin_manager(entry_points=False), metrics)
    with captured() as lines:
        async with anyio.create_task_group() as tg:
            await tg.start(runtime.run)
            await sink.until(lambda objects: len(objects) == 3)
            token_file.write_text(none)  # the token loses every right: 200 {}
            consul.register(
                "web", service_id="web-2", address="10.2.0.12", port=8080, tags=TAG
            )  # fmt: skip  (wakes the watch)
            with anyio.fail_after(DEADLINE):
                while (
                    counter(metrics, "consul_sync_source_suddenly_empty_total", source="consul") < 1
                ):
                    await anyio.sleep(0.02)
            await anyio.sleep(0.5)
            assert len(sink.objects) == 3
            assert sink.deletes == 0
            assert not runtime.snapshots["consul"].complete
            token_file.write_text(read)  # fixed: reads (and a change) flow again
            consul.deregister("api-1")
            await sink.until(lambda objects: set(k[1] for k in objects) == {"web", "db"})
            runtime.stop()
    assert any("no service at all" in line and str(token_file) in line for line in lines)
    assert not any(read in line or none in line for line in lines)


async def test_anonymous_first_answer_is_incomplete(consul: ConsulDouble) -> None:
    metrics = Metrics()
    async with running(make_source(consul.url, metrics=metrics)) as seen:
        assert not seen.last.complete
        assert seen.last.services == {}
    assert counter(metrics, "consul_sync_source_suddenly_empty_total", source="consul") == 1


async def test_partial_view_of_a_limited_token_is_what_it_can_read(consul: ConsulDouble) -> None:
    token = consul.create_token(["web-only"])
    async with running(make_source(consul.url, token=token)) as seen:
        assert seen.last.complete
        assert seen.names() == {"web"}


@pytest.mark.parametrize("where", ["file", "env"])
async def test_unknown_token_is_a_clear_error_naming_its_source(
    consul: ConsulDouble, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    bad = "00000000-dead-beef-0000-000000000000"
    metrics = Metrics()
    options: dict[str, str] = {}
    if where == "file":
        path = tmp_path / "token"
        path.write_text(bad + "\n")
        options["token_file"] = str(path)
        expected = str(path)
    else:
        monkeypatch.setenv("CONSUL_HTTP_TOKEN", bad)
        options["token"] = bad
        expected = "CONSUL_HTTP_TOKEN"
    with captured() as lines:
        async with running(make_source(consul.url, metrics=metrics, **options)) as seen:
            assert not seen.last.complete
            assert seen.last.services == {}
    assert counter(metrics, "consul_sync_consul_errors_total") >= 1
    errors = [line for line in lines if "403" in line]
    assert errors and all("ACL not found" in line and expected in line for line in errors)
    assert not any(bad in line for line in lines)


async def test_snapshot_with_unknown_token_raises_a_source_error(consul: ConsulDouble) -> None:
    from consul_sync import SourceError

    source = make_source(consul.url, token="00000000-dead-beef-0000-000000000000")
    with pytest.raises(SourceError, match="403 ACL not found"):
        await source.snapshot()
    await source.aclose()
    source = make_source(consul.url)  # anonymous: {}
    with pytest.raises(SourceError, match="no service at all"):
        await source.snapshot()
    await source.aclose()


async def test_token_file_change_is_picked_up(consul: ConsulDouble, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(consul.create_token(["web-only"]))
    async with running(make_source(consul.url, token_file=str(token_file))) as seen:
        assert seen.names() == {"web"}
        token_file.write_text(consul.create_token(["read-only"]) + "\n")
        consul.bump_index()
        # the next read uses the new token; a token change re-reads everything
        consul.register("web", service_id="web-3", address="10.2.0.13", port=8080, tags=TAG)
        await seen.until(lambda s: {k[1] for k in s.services} == {"web", "db", "api"}, DEADLINE)


async def test_after_an_empty_answer_complete_waits_for_the_sweep(
    consul: ConsulDouble, tmp_path: Path
) -> None:
    read, none = consul.create_token(["read-only"]), consul.create_token([])
    token_file = tmp_path / "token"
    token_file.write_text(read)
    source = make_source(consul.url, token_file=str(token_file), wait=2)
    source.token_poll = 0.05
    async with running(source) as seen:
        token_file.write_text(none)
        await seen.until(lambda s: not s.complete, DEADLINE, "incomplete on the empty answer")
        consul.register(
            "web", service_id="web-1", address="10.2.0.99", port=8080, tags=TAG, status="passing"
        )  # fmt: skip  (in place, unseen meanwhile)
        start = len(seen.snapshots)
        consul.inject_fault("delay", times=None, path_prefix="/v1/health/service/", seconds=0.5)
        token_file.write_text(read)

        def fresh(s: Any) -> bool:
            return {e.address for e in s.services[("network", "web")].endpoints} == {"10.2.0.99"}

        await seen.until(lambda s: s.complete and fresh(s), DEADLINE, "recovered")
        stale = [s for s in seen.snapshots[start:] if s.complete and not fresh(s)]
        assert stale == []
