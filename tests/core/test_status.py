"""The status page: /status.json, / (in a real headless browser) and
``consul-sync status``, over real loopback HTTP, with the fake plugins."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import pytest

from consul_sync import logs, status
from consul_sync.cli import App, main
from consul_sync.errors import SinkError
from consul_sync.health import ProbeServer
from consul_sync.model import Endpoint, ServiceKey, StatusNote
from consul_sync.testing import service
from tests import browser

from .helpers import fake_app, sink, source, until

pytestmark = pytest.mark.anyio

NS = "network"
TOKEN = "0d1e2f3a-secret-token-4b5c6d7e"


def _services() -> list[Any]:
    return [
        service(
            "web",
            "10.0.0.1",
            Endpoint("10.0.0.2", ready=False, reason="check 'HTTP on :8080' is critical"),
            source="src0",
        ),
        service("plex", "10.0.0.3", source="src0"),
        service("refused", "10.0.0.4", source="src0"),
        service("taken", "10.0.0.5", source="src0"),
    ]


def _notes(keys: Iterable[ServiceKey]) -> dict[ServiceKey, StatusNote]:
    return {(NS, "plex"): StatusNote(name="plex-media", notes=["renamed for the test"])}


@pytest.fixture
async def served() -> AsyncIterator[tuple[App, str]]:
    app = fake_app(metrics_addr="127.0.0.1:0")
    fake = sink(app)
    fake.failures[(NS, "refused")] = SinkError("Kubernetes would refuse it", retryable=False)
    fake.add_foreign((NS, "taken"))
    fake.status_notes = _notes  # type: ignore[attr-defined]
    source(app).services = {s.key: s for s in _services()}
    probes = ProbeServer(
        app.runtime.readiness,
        app.metrics.registry,
        status=lambda: status.collect(app.runtime),
    )
    async with anyio.create_task_group() as tg:
        port = await tg.start(probes.serve, "127.0.0.1:0")
        await tg.start(app.runtime.run)
        await until(lambda: app.runtime.readiness()[0] and (NS, "web") in app.runtime.applied)
        yield app, f"127.0.0.1:{port}"
        app.runtime.stop()
        tg.cancel_scope.cancel()


def _rows(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in document["services"]}


async def test_status_json_explains_every_service(served: tuple[App, str]) -> None:
    _, addr = served
    async with httpx.AsyncClient() as client:
        reply = await client.get(f"http://{addr}/status.json")
    assert reply.status_code == 200
    assert reply.headers["content-type"] == "application/json"
    document = reply.json()
    assert document["schema"] == 1 and document["ready"] is True
    assert [s["name"] for s in document["sources"]] == ["src0"]
    assert document["sources"][0]["complete"] is True
    assert document["sources"][0]["last_complete"]
    (fake,) = document["sinks"]
    assert fake["active"] and fake["reachable"]
    assert fake["conflicts"] == ["network/taken"]
    assert "network/refused" in fake["failing"]
    rows = _rows(document)
    assert set(rows) == {"web", "plex", "refused", "taken"}
    web = rows["web"]
    assert web["endpoints"] == {"ready": 1, "not_ready": 1, "total": 2}
    assert web["not_ready"] == [
        {
            "address": "10.0.0.2",
            "port": 8080,
            "source": "src0",
            "reason": "check 'HTTP on :8080' is critical",
        }
    ]
    assert web["problem"] and not web["skipped"]
    assert web["last_change"] and web["last_change_sink"] == "sink"
    assert web["change_to_apply_seconds"] is not None and web["change_to_apply_seconds"] >= 0
    assert rows["plex"]["names"] == {"sink": "plex-media"}
    assert rows["plex"]["notes"] == ["sink: renamed for the test"]
    assert not rows["plex"]["problem"]
    assert rows["refused"]["skipped"] and "Kubernetes would refuse it" in str(
        rows["refused"]["notes"]
    )
    assert rows["taken"]["skipped"] and "does not own" in str(rows["taken"]["notes"])
    assert document["summary"]["problems"] == 3


async def test_the_query_filters_rows(served: tuple[App, str]) -> None:
    _, addr = served
    async with httpx.AsyncClient() as client:
        only = (await client.get(f"http://{addr}/status.json?q=PLEX-m")).json()
        problems = (await client.get(f"http://{addr}/status.json?problem=1")).json()
        limited = (await client.get(f"http://{addr}/status.json?limit=1")).json()
    assert [r["name"] for r in only["services"]] == ["plex"]  # by its name in the sink
    assert sorted(r["name"] for r in problems["services"]) == ["refused", "taken", "web"]
    assert (limited["shown"], limited["total"]) == (1, 4)


async def test_no_secret_ever_shows(served: tuple[App, str]) -> None:
    app, addr = served
    logs.REDACTOR.add(TOKEN)
    await source(app).push(
        upsert=[
            service(
                "web",
                "10.0.0.1",
                Endpoint("10.0.0.2", ready=False, reason=f"check output says token={TOKEN}"),
                source="src0",
            )
        ]
    )
    app.runtime._source_error("src0", f"403 for token {TOKEN}")
    await until(lambda: TOKEN in str(app.runtime.desired[(NS, "web")].endpoints[1].reason))
    async with httpx.AsyncClient() as client:
        page = (await client.get(f"http://{addr}/")).text
        document = (await client.get(f"http://{addr}/status.json")).text
    out = io.StringIO()
    code = await anyio.to_thread.run_sync(lambda: main(["status", "--addr", addr], stdout=out))
    assert code == 0
    for text in (page, document, out.getvalue()):
        assert TOKEN not in text
        assert "********" in text


async def test_the_command_prints_a_table(served: tuple[App, str]) -> None:
    _, addr = served
    out = io.StringIO()
    code = await anyio.to_thread.run_sync(lambda: main(["status", "--addr", addr], stdout=out))
    assert code == 0
    text = out.getvalue()
    assert text.startswith("consul-sync ")
    assert "SERVICE" in text and "network/web" in text
    assert "10.0.0.2:8080 check 'HTTP on :8080' is critical" in text
    assert "skipped" in text
    out = io.StringIO()
    argv = ["status", "--addr", addr, "--problems", "--json"]
    assert await anyio.to_thread.run_sync(lambda: main(argv, stdout=out)) == 0
    assert {r["name"] for r in json.loads(out.getvalue())["services"]} == {
        "web",
        "refused",
        "taken",
    }


def test_the_command_says_when_nothing_answers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--addr", "127.0.0.1:1"], stdout=io.StringIO()) == 1
    assert "cannot read http://127.0.0.1:1/status.json" in capsys.readouterr().err


async def test_a_person_sees_the_services_in_a_real_browser(
    served: tuple[App, str], tmp_path: Path
) -> None:
    _, addr = served

    def look(query: str) -> str:
        dom = browser.dom(f"http://{addr}/{query}", tmp_path / "profile")
        return browser.visible_text(dom)

    everything = await anyio.to_thread.run_sync(look, "")
    async with httpx.AsyncClient() as client:
        source_text = (await client.get(f"http://{addr}/")).text
    assert "<script" not in source_text and "http://" not in source_text  # no JS, no assets
    for seen in (
        "consul-sync ready",
        "network/web",
        "1/2 ready",
        "10.0.0.2:8080 — check 'HTTP on :8080' is critical",
        "plex-media",
        "skipped",
        "Kubernetes would refuse it",
        "4 of 4 shown",
    ):
        assert seen in everything, seen
    plex = await anyio.to_thread.run_sync(look, "?q=plex")
    assert "network/plex" in plex and "network/web" not in plex
    assert "1 of 1 shown" in plex
    problems = await anyio.to_thread.run_sync(look, "?problem=1")
    assert "network/web" in problems and "network/plex" not in problems
    nothing = await anyio.to_thread.run_sync(look, "?q=nope")
    assert "No service matches." in nothing
    shot = await anyio.to_thread.run_sync(
        browser.screenshot, f"http://{addr}/", tmp_path / "profile", tmp_path / "page.png"
    )
    assert shot.stat().st_size > 10_000  # something was drawn


def test_the_page_escapes_what_it_shows() -> None:
    document = {
        "schema": 1,
        "version": "0",
        "generated_at": "now",
        "ready": True,
        "readiness": "ready",
        "summary": {
            "services": 1,
            "problems": 1,
            "endpoints": {"ready": 0, "not_ready": 1, "total": 1},
        },
        "sources": [],
        "sinks": [],
        "services": [
            {
                "namespace": "ns",
                "name": "<script>x</script>",
                "source_name": "<b>",
                "sources": [],
                "names": {},
                "endpoints": {"ready": 0, "not_ready": 1, "total": 1},
                "not_ready": [{"address": "1.2.3.4", "port": 1, "source": None, "reason": "<i>"}],
                "skipped": False,
                "problem": True,
                "notes": ["<img src=x>"],
                "last_change": None,
                "last_change_sink": None,
                "change_to_apply_seconds": None,
            }
        ],
        "shown": 1,
        "total": 1,
    }
    page = status.render_html(document, {"q": '"><script>'})
    assert "<script>" not in page and "<img" not in page and "<i>" not in page
    assert "&lt;script&gt;" in page
