"""Tests of the Consul HTTP API double, checked against exchanges recorded from Consul 1.10.

The recordings live in ``tests/fixtures/consul`` (copied from the project's shared
fixtures). The recorded scenarios are replayed against the double in the same order,
including the writes the recorder did not keep, so that even the raft indexes line up: statuses,
the kept headers (``X-Consul-*``, ``X-Cache``, ``Age``, ``Content-Type``, names spelled exactly as
on the wire) and bodies (values and key order) are compared as recorded. Blocking waits are
shrunk with ``time_scale``.

Timing without racing the clock: a loaded CI machine can stall any step for a long while, so
no test here says "answered within N ms". "It blocked at least ~X" is a lower bound and is kept.
"It was woken" uses a wait of minutes (:data:`LONG_WAIT`), so an answer within
:data:`WOKEN_WITHIN` can only be the wake. The wait the double chose (jitter, default, cap) and
what ended a query are read from its record (:attr:`ConsulDouble.parked_queries`), not from the
wall clock, which only gets a hang guard (:data:`SLACK`).
"""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.consul_double import (
    CONNECTION_LIMIT_BODY,
    CONNECTION_LIMIT_RESPONSE,
    ConsulDouble,
    FilterError,
    ParkedQuery,
    PolicyError,
    compile_filter,
    go_json,
    parse_go_duration,
    parse_rules,
)

SCALE = 0.05  # time_scale for replayed blocking queries: wait=2s becomes 0.1 s
#: A ``?wait=`` that only a wake can beat: 30 s at SCALE.
LONG_WAIT = "10m"
#: An answer to a LONG_WAIT query within this many seconds was a wake (half its wait).
WOKEN_WITHIN = 600 * SCALE / 2
#: time_scale for replayed queries that a write wakes: the recorded wait=10s becomes 30 s.
WOKEN_SCALE = 3.0
#: Seconds a loaded machine may add to anything: an upper bound with this slack guards hangs only.
SLACK = 5.0


#: The recordings, copied into the repository from the project's shared fixtures.
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "consul"


def fx(number: str) -> dict[str, Any]:
    assert FIXTURES is not None
    (path,) = FIXTURES.glob(f"{number}-*.json")
    return json.loads(path.read_text())  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------- HTTP client


@dataclass
class Resp:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    elapsed: float

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def kept_headers(self) -> dict[str, str]:
        """The headers the recorder kept, with their names exactly as sent."""
        return {
            k: v
            for k, v in self.headers
            if k.startswith("X-Consul-") or k in ("X-Cache", "Age", "Content-Type")
        }

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def index(self) -> int:
        value = self.header("X-Consul-Index")
        assert value is not None
        return int(value)


def _query_string(query: Mapping[str, str | list[str]] | None) -> str:
    parts: list[str] = []
    for key, value in (query or {}).items():
        for item in value if isinstance(value, list) else [value]:
            parts.append(key if item == "" else f"{key}={urllib.parse.quote(item, safe='')}")
    return "?" + "&".join(parts) if parts else ""


def call(
    consul: ConsulDouble,
    method: str,
    path: str,
    query: Mapping[str, str | list[str]] | None = None,
    headers: Mapping[str, str] | None = None,
    body: Any = None,
    conn: http.client.HTTPConnection | None = None,
    timeout: float = 60.0,  # generous: past a LONG_WAIT's 30 s, and only a hang reaches it
) -> Resp:
    own = conn is None
    connection = conn or http.client.HTTPConnection("127.0.0.1", consul.port, timeout=timeout)
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    started = time.monotonic()
    try:
        connection.request(
            method, path + _query_string(query), body=data, headers=dict(headers or {})
        )
        response = connection.getresponse()
        payload = response.read()
        return Resp(response.status, response.getheaders(), payload, time.monotonic() - started)
    finally:
        if own:
            connection.close()


def replay(
    consul: ConsulDouble, fixture: Mapping[str, Any], tokens: Mapping[str, str] | None = None
) -> Resp:
    """Send a recorded request, swapping token placeholders for real secrets."""
    request = fixture["request"]
    headers = dict(request["headers"])
    for name, original in headers.items():
        value = original
        for placeholder, secret in (tokens or {}).items():
            value = value.replace(placeholder, secret)
        headers[name] = value
    return call(
        consul, request["method"], request["path"], request["query"], headers, request["body"]
    )


def shape(value: Any) -> Any:
    """A comparable form that also captures the key order of every object."""
    if isinstance(value, dict):
        return [(k, shape(v)) for k, v in value.items()]
    if isinstance(value, list):
        return [shape(v) for v in value]
    return value


def sorted_tags(catalog: dict[str, list[str]]) -> dict[str, list[str]]:
    return {name: sorted(tags) for name, tags in catalog.items()}


def assert_like_recording(
    fixture: Mapping[str, Any], resp: Resp, normalize: Callable[[Any], Any] = lambda body: body
) -> None:
    recorded = fixture["response"]
    assert resp.status == recorded["status"], resp.body
    assert resp.kept_headers() == recorded["headers"]
    body = recorded["body"]
    if body is None:
        assert resp.body == b""
    elif recorded["headers"].get("Content-Type") == "application/json":
        ours = resp.json()
        if fixture["request"]["path"] == "/v1/catalog/services":
            ours, body = sorted_tags(ours), sorted_tags(body)
        assert shape(normalize(ours)) == shape(normalize(body))
    else:
        assert resp.body.decode() == body


def background(fn: Callable[[], Resp]) -> Future[Resp]:
    pool = ThreadPoolExecutor(max_workers=1)
    future = pool.submit(fn)
    pool.shutdown(wait=False)
    return future


def register(consul: ConsulDouble, body: dict[str, Any], token: str | None = None) -> None:
    headers = {"X-Consul-Token": token} if token else {}
    resp = call(consul, "PUT", "/v1/agent/service/register", headers=headers, body=body)
    assert resp.status == 200, resp.body


def deregister(consul: ConsulDouble, service_id: str) -> None:
    assert call(consul, "PUT", f"/v1/agent/service/deregister/{service_id}").status == 200


@pytest.fixture
def consul() -> Iterator[ConsulDouble]:
    with ConsulDouble(time_scale=SCALE, seed=7) as double:
        yield double
        assert double.errors == []


# ------------------------------------------------------- plain agent: replay of recordings 01-54


@dataclass
class PlainRun:
    results: dict[str, Resp]
    parked: dict[str, ParkedQuery]  # the double's record of each fixture's query that parked


def _replay_plain_agent() -> PlainRun:
    results: dict[str, Resp] = {}
    parked: dict[str, ParkedQuery] = {}
    c = ConsulDouble(time_scale=SCALE, seed=1).start()
    try:

        def keep_parked(number: str, since: int) -> None:
            request = fx(number)["request"]
            wanted = (request["path"], request["query"].get("index"))
            mine = [p for p in c.parked_queries[since:] if (p.path, str(p.index)) == wanted]
            if mine:
                (parked[number],) = mine

        def rec(number: str) -> None:
            since = len(c.parked_queries)
            results[number] = replay(c, fx(number))
            keep_parked(number, since)

        def put(path: str, query: Mapping[str, str] | None = None) -> None:
            assert call(c, "PUT", path, query).status == 200

        def blocked(number: str, count: int, scale: float = SCALE) -> Callable[[], None]:
            """Park the fixture's query (its wait scaled by ``scale``); call the result to
            collect the answer once a write should have ended it."""
            since = len(c.parked_queries)
            c.time_scale = scale
            future = background(lambda: replay(c, fx(number)))
            assert c.wait_for_blocked(count), "blocking query never parked"
            c.time_scale = SCALE

            def collect() -> None:
                results[number] = future.result()
                keep_parked(number, since)

            return collect

        rec("01")
        rec("02")
        rec("03")
        register(
            c,
            {
                "ID": "web-3",
                "Name": "web",
                "Tags": ["kubernetes"],
                "Address": "10.1.0.13",
                "Port": 8082,
                "Check": {"TTL": "10m"},
            },
        )
        rec("04")
        register(
            c,
            {
                "ID": "db-1",
                "Name": "db",
                "Tags": ["kubernetes", "postgres"],
                "Address": "10.1.0.20",
                "Port": 5432,
                "Check": {"TTL": "10m", "Status": "passing"},
            },
        )
        register(
            c,
            {
                "ID": "cache-1",
                "Name": "cache",
                "Address": "10.1.0.30",
                "Port": 6379,
                "Check": {"TTL": "10m", "Status": "passing"},
            },
        )
        for number in ("05", "06", "07", "08", "09", "10", "11", "12", "13"):
            rec(number)
        put("/v1/agent/service/maintenance/web-1", {"enable": "false"})
        for number in ("14", "15", "16"):
            rec(number)
        put("/v1/agent/maintenance", {"enable": "false"})
        rec("17")
        register(
            c,
            {
                "ID": "nas-host",
                "Name": "nas",
                "Tags": ["kubernetes"],
                "Address": "nas.home.arpa",
                "Port": 5000,
            },
        )
        register(
            c,
            {
                "ID": "nas-tagged",
                "Name": "nas",
                "Tags": ["kubernetes"],
                "Address": "10.1.0.50",
                "Port": 5001,
                "TaggedAddresses": {
                    "lan_ipv4": {"Address": "10.1.0.50", "Port": 5001},
                    "wan_ipv4": {"Address": "198.51.100.50", "Port": 15001},
                },
            },
        )
        rec("18")
        for service_id in ("nas-v6", "nas-host", "nas-tagged"):
            deregister(c, service_id)
        for number in ("19", "20", "21", "22"):
            rec(number)
        deregister(c, "ha-1")
        for number in ("23", "24", "25"):
            rec(number)
        deregister(c, "web-1-sidecar-proxy")
        register(c, {"ID": "tmp-1", "Name": "tmp", "Port": 1})
        deregister(c, "tmp-1")
        rec("26")
        woken = blocked("27", 1, WOKEN_SCALE)
        register(
            c,
            {
                "ID": "api-1",
                "Name": "api",
                "Tags": ["kubernetes"],
                "Address": "10.1.0.40",
                "Port": 9090,
            },
        )
        woken()
        health = blocked("28", 1, WOKEN_SCALE)
        catalog = blocked("29", 2)
        put("/v1/agent/check/fail/service:web-1", {"note": "boom"})
        health()
        catalog()
        put("/v1/agent/check/pass/service:web-1", {"note": "ok"})
        for number in (
            "30",
            "31",
            "32",
            "33",
            "34",
            "35",
            "36",
            "37",
            "38",
            "39",
            "40",
            "41",
            "42",
            "43",
            "44",
            "45",
            "46",
            "47",
        ):
            rec(number)
        waiting = blocked("49", 1, WOKEN_SCALE)
        c.bump_index()  # the agent's own raft write recorded between 39 and 41
        rec("48")
        waiting()
        for number in ("50", "51", "52", "53", "54"):
            rec(number)
        assert c.errors == []
    finally:
        c.stop()
    return PlainRun(results, parked)


@pytest.fixture(scope="module")
def plain_run() -> PlainRun:
    return _replay_plain_agent()


@pytest.fixture(scope="module")
def plain(plain_run: PlainRun) -> dict[str, Resp]:
    return plain_run.results


PLAIN_NUMBERS = [f"{n:02d}" for n in range(1, 55) if n != 45]


@pytest.mark.parametrize("number", PLAIN_NUMBERS)
def test_plain_agent_matches_recording(plain: dict[str, Resp], number: str) -> None:
    assert_like_recording(fx(number), plain[number])


def test_agent_self_contains_the_trimmed_recording(plain: dict[str, Resp]) -> None:
    recorded = fx("45")["response"]
    resp = plain["45"]
    assert resp.status == recorded["status"]
    assert resp.kept_headers() == recorded["headers"]
    ours = resp.json()
    for section, values in recorded["body"].items():
        for key, value in values.items():
            assert ours[section][key] == value


# Recorded timings: (fixture, recorded wait in seconds, how the query ended).
BLOCKING_TIMINGS = [
    ("26", 2.0, "timeout+jitter"),
    ("27", 10.0, "woken"),
    ("28", 10.0, "woken"),
    ("29", 3.0, "timeout+jitter"),
    ("30", 2.0, "timeout-exact"),
    ("31", 2.0, "immediate"),
    ("32", 2.0, "timeout+jitter"),
    ("33", 2.0, "timeout-exact"),
    ("49", 10.0, "woken"),
]


@pytest.mark.parametrize(("number", "wait", "outcome"), BLOCKING_TIMINGS)
def test_plain_agent_blocking_timings(
    plain_run: PlainRun, number: str, wait: float, outcome: str
) -> None:
    elapsed = plain_run.results[number].elapsed
    parked = plain_run.parked.get(number)
    if outcome == "immediate":  # answered without parking
        assert parked is None
        return
    assert parked is not None, "the query never parked"
    if outcome == "woken":  # replayed with a 30 s wait: only the write can answer it in 15
        assert parked.outcome == "changed"
        assert parked.wait >= wait
        assert elapsed < parked.timeout / 2
        return
    scaled = wait * SCALE
    assert parked.outcome == "timeout"
    assert parked.timeout == pytest.approx(parked.wait * SCALE)
    if outcome == "timeout-exact":  # streaming: exactly the wait
        assert parked.wait == wait
    else:  # blocking-query: the wait plus up to wait/16
        assert wait <= parked.wait <= wait * (1 + 1 / 16)
    assert scaled * 0.98 <= elapsed <= parked.timeout + SLACK


# -------------------------------------------------------- ACL agent: replay of recordings 55-75

ACL_NODE_ID = "d4bb3099-86ae-1701-645a-4868aa157771"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
HASH_RE = re.compile(r"^[A-Za-z0-9+/]{43}=$")
TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")


@dataclass
class AclRun:
    results: dict[str, Resp]
    tokens: dict[str, str]
    policy_ids: dict[str, str]  # ours -> recorded


def _replay_acl_agent() -> AclRun:
    management = "11111111-2222-3333-4444-555555555555"
    tokens = {
        "<management-token>": management,
        "<bad-token>": "99999999-8888-7777-6666-555555555555",
    }
    results: dict[str, Resp] = {}
    c = ConsulDouble(
        acl=True,
        management_token=management,
        node_name="dev-acl",
        node_id=ACL_NODE_ID,
        time_scale=SCALE,
    ).start()
    try:
        c.bump_index(403 - c.index)
        results["55"] = replay(c, fx("55"), tokens)
        register(
            c,
            {
                "ID": "web-2",
                "Name": "web",
                "Tags": ["kubernetes"],
                "Address": "10.2.0.12",
                "Port": 8080,
                "Check": {"TTL": "10m", "Status": "passing"},
            },
            management,
        )
        register(
            c,
            {
                "ID": "db-1",
                "Name": "db",
                "Tags": ["kubernetes"],
                "Address": "10.2.0.21",
                "Port": 5432,
                "Check": {"TTL": "10m", "Status": "passing"},
            },
            management,
        )
        policy_ids: dict[str, str] = {}
        for number in ("56", "57"):
            resp = results[number] = replay(c, fx(number), tokens)
            policy_ids[resp.json()["ID"]] = fx(number)["response"]["body"]["ID"]
        for number in ("58", "59", "60"):
            resp = results[number] = replay(c, fx(number), tokens)
            recorded = fx(number)["response"]["body"]
            tokens[recorded["SecretID"]] = resp.json()["SecretID"]
            tokens[recorded["AccessorID"]] = resp.json()["AccessorID"]
        for n in range(61, 76):
            results[str(n)] = replay(c, fx(str(n)), tokens)
        assert c.errors == []
    finally:
        c.stop()
    return AclRun(results, tokens, policy_ids)


@pytest.fixture(scope="module")
def acl_run() -> AclRun:
    return _replay_acl_agent()


def _normalize_acl_write(run: AclRun) -> Callable[[Any], Any]:
    reverse = {ours: placeholder for placeholder, ours in run.tokens.items()}

    def normalize(body: Any) -> Any:
        body = dict(body)
        if "ID" in body:  # a policy
            assert UUID_RE.match(body["ID"])
            body["ID"] = "policy-id"
        if "SecretID" in body:  # a token
            body["SecretID"] = reverse.get(body["SecretID"], body["SecretID"])
            body["AccessorID"] = reverse.get(body["AccessorID"], body["AccessorID"])
            assert TIME_RE.match(body["CreateTime"])
            body["CreateTime"] = "time"
            if "Policies" in body:  # linked by the IDs the policy replies carried
                body["Policies"] = [
                    {"ID": run.policy_ids.get(p["ID"], p["ID"]), "Name": p["Name"]}
                    for p in body["Policies"]
                ]
        assert HASH_RE.match(body["Hash"])
        body["Hash"] = "hash"
        return body

    return normalize


def _normalize_node_indexes(body: Any) -> Any:
    """The recorded ACL agent's node was created at 14/15 and the double's at 11/13."""
    if not isinstance(body, list):
        return body
    out = json.loads(json.dumps(body))
    for entry in out:
        entry["Node"]["CreateIndex"] = entry["Node"]["ModifyIndex"] = 0
        for check in entry["Checks"]:
            if check["CheckID"] == "serfHealth":
                check["CreateIndex"] = check["ModifyIndex"] = 0
    return out


@pytest.mark.parametrize("number", ["55", "56", "57", "58", "59", "60"])
def test_acl_writes_match_recording(acl_run: AclRun, number: str) -> None:
    assert_like_recording(
        fx(number),
        acl_run.results[number],
        _normalize_acl_write(acl_run) if number != "55" else lambda b: b,
    )


@pytest.mark.parametrize("number", [str(n) for n in range(61, 76)])
def test_acl_reads_match_recording(acl_run: AclRun, number: str) -> None:
    assert_like_recording(fx(number), acl_run.results[number], _normalize_node_indexes)


# -------------------------------------------------- health/state watches: recordings 80-82


def test_health_state_watch_recordings() -> None:
    with ConsulDouble(node_name="vm", time_scale=SCALE) as c:
        c.bump_index(211 - c.index)
        for i, (tags, status) in enumerate(
            [
                (["kubernetes", "internal"], "passing"),
                (["kubernetes"], "warning"),
                (["kubernetes"], "critical"),
            ],
            start=1,
        ):
            register(
                c,
                {
                    "ID": f"web-{i}",
                    "Name": "web",
                    "Tags": tags,
                    "Port": 8080 + i,
                    "Check": {"CheckID": f"web-{i}-ttl", "TTL": "10m", "Status": status},
                },
            )
        assert_like_recording(fx("80"), replay(c, fx("80")))

        c.bump_index(224 - c.index)
        api = {
            "ID": "api-1",
            "Name": "api",
            "Tags": ["kubernetes"],
            "Port": 9000,
            "Check": {"CheckID": "api-1-ttl", "TTL": "10m", "Status": "passing"},
        }
        register(c, api)
        c.bump_index()
        register(
            c,
            {
                "ID": "misc-1",
                "Name": "misc",
                "Port": 1,
                "Check": {"TTL": "10m", "Status": "passing"},
            },
        )
        assert c.checks_index == 227

        c.time_scale = WOKEN_SCALE  # recorded wait=10s: 30 s, so a quick answer is the wake
        woken = background(lambda: replay(c, fx("81")))
        assert c.wait_for_blocked(1)
        assert call(c, "PUT", "/v1/agent/check/warn/api-1-ttl").status == 200
        resp = woken.result()
        assert_like_recording(fx("81"), resp)
        assert resp.elapsed < 10 * WOKEN_SCALE / 2
        assert [p.outcome for p in c.parked_queries] == ["changed"]

        catalog_index = c.catalog_index
        api_index = c.service_index("api")
        catalog = background(
            lambda: call(
                c, "GET", "/v1/catalog/services", {"index": str(catalog_index), "wait": "10s"}
            )
        )
        health = background(
            lambda: call(
                c, "GET", "/v1/health/service/api", {"index": str(api_index), "wait": "10s"}
            )
        )
        assert c.wait_for_blocked(2)
        # recorded wait=3s: 1.5 s, long enough to be parked still when the port changes
        c.time_scale = state_scale = 0.5
        state = background(lambda: replay(c, fx("82")))
        assert c.wait_for_blocked(3)
        register(c, dict(api, Port=9001))  # same service on a new port
        assert catalog.result().elapsed < 10 * WOKEN_SCALE / 2
        assert health.result().elapsed < 10 * WOKEN_SCALE / 2
        assert health.result().json()[0]["Service"]["Port"] == 9001
        resp = state.result()
        assert_like_recording(fx("82"), resp)
        assert resp.elapsed >= 3 * state_scale * 0.98
        outcomes = {p.path: p.outcome for p in c.parked_queries[1:]}
        assert outcomes == {
            "/v1/catalog/services": "changed",
            "/v1/health/service/api": "changed",
            "/v1/health/state/any": "timeout",
        }
        assert c.errors == []


# -------------------------------------------------------------- connection limit: recording 90


def test_connection_limit_matches_recording() -> None:
    recorded = fx("90")
    probe = recorded["raw_socket_probe"]
    assert probe["bytes_received"].encode() == CONNECTION_LIMIT_RESPONSE
    assert recorded["failure_body"] == CONNECTION_LIMIT_BODY
    with ConsulDouble(max_conns_per_client=5, time_scale=SCALE) as c:
        held = [socket.create_connection(("127.0.0.1", c.port)) for _ in range(5)]
        try:
            assert c.wait_for_connections(5)
            # Nothing is sent on this connection: a double that read a request before
            # answering would leave recv() waiting until its timeout (TimeoutError).
            with socket.create_connection(("127.0.0.1", c.port), timeout=30) as extra:
                data = b""
                while chunk := extra.recv(4096):
                    data += chunk
            assert data == probe["bytes_received"].encode()
            assert c.requests == []  # answered at accept time, before a byte was read
            resp = call(c, "GET", "/v1/catalog/services")
            then = probe["then_http_client_get"]
            assert resp.status == then["status"]
            assert resp.kept_headers() == then["headers"]
            assert resp.body.decode() == then["body"]
            assert c.rejected_connections == 2
            assert c.current_connections == 5
            assert c.peak_connections == 5
        finally:
            for sock in held:
                sock.close()
        assert c.wait_for_connections(0)
        assert call(c, "GET", "/v1/catalog/services").status == 200


def test_connection_limit_with_parked_blocking_queries() -> None:
    with ConsulDouble(max_conns_per_client=5, time_scale=SCALE) as c:
        index = str(c.catalog_index)
        futures = [
            background(
                lambda: call(c, "GET", "/v1/catalog/services", {"index": index, "wait": LONG_WAIT})
            )
            for _ in range(5)
        ]
        assert c.wait_for_blocked(5)
        # the parked queries hold their slots for 30 s: an answer in 15 did not wait for one
        rejected = call(c, "GET", "/v1/catalog/services", timeout=60)
        assert rejected.status == 429
        assert rejected.elapsed < WOKEN_WITHIN
        c.register("new", port=1)
        assert all(f.result().status == 200 for f in futures)
        assert [p.outcome for p in c.parked_queries] == ["changed"] * 5
        assert c.peak_connections == 5


def test_keep_alive_serves_many_requests_on_one_connection(consul: ConsulDouble) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", consul.port, timeout=5)
    try:
        for i in range(50):
            consul.register("web", service_id=f"web-{i}", port=i)
            resp = call(consul, "GET", "/v1/health/service/web", conn=conn)
            assert resp.status == 200
            assert len(resp.json()) == i + 1
            assert resp.header("Content-Length") == str(len(resp.body))
        assert call(consul, "PUT", "/v1/agent/service/deregister/web-0", conn=conn).status == 200
        assert consul.total_connections == 1
        assert consul.peak_connections == 1
    finally:
        conn.close()
    assert consul.wait_for_connections(0)


# -------------------------------------------------------------------------- reads and headers


def test_fresh_agent_has_only_consul(consul: ConsulDouble) -> None:
    resp = call(consul, "GET", "/v1/catalog/services")
    assert resp.json() == {"consul": []}
    assert resp.index == 11
    ignored = call(consul, "GET", "/v1/catalog/services", {"filter": 'ServiceName == "x"'})
    assert ignored.json() == {"consul": []}  # Consul 1.10 ignores ?filter= here
    health = call(consul, "GET", "/v1/health/service/consul").json()
    assert [e["Service"]["ID"] for e in health] == ["consul"]
    assert [c["CheckID"] for c in health[0]["Checks"]] == ["serfHealth"]


def test_every_response_carries_the_acl_policy_header(consul: ConsulDouble) -> None:
    for method, path in [
        ("GET", "/v1/catalog/services"),
        ("GET", "/v1/nope"),
        ("PUT", "/v1/agent/check/pass/nope"),
        ("GET", "/v1/status/leader"),
        ("POST", "/v1/catalog/services"),
    ]:
        assert call(consul, method, path).header("X-Consul-Default-Acl-Policy") == "allow"


def test_method_not_allowed(consul: ConsulDouble) -> None:
    resp = call(consul, "PUT", "/v1/catalog/services")
    assert resp.status == 405
    assert resp.header("Allow") == "GET"
    assert resp.body == b"method PUT not allowed"
    assert call(consul, "GET", "/v1/agent/service/register").status == 405


def test_catalog_tag_order_is_not_stable(consul: ConsulDouble) -> None:
    consul.register("web", service_id="web-1", tags=["a", "b", "c"])
    consul.register("web", service_id="web-2", tags=["c", "d", "a"])
    orders = {tuple(call(consul, "GET", "/v1/catalog/services").json()["web"]) for _ in range(30)}
    assert len(orders) > 1
    assert all(sorted(order) == ["a", "b", "c", "d"] for order in orders)


def test_catalog_tag_order_can_be_made_stable() -> None:
    with ConsulDouble(shuffle_tags=False) as c:
        c.register("web", service_id="web-1", tags=["b", "a", "b"])
        c.register("web", service_id="web-2", tags=["c", "a"])
        orders = {tuple(call(c, "GET", "/v1/catalog/services").json()["web"]) for _ in range(5)}
        assert orders == {("b", "a", "c")}


def test_catalog_index_moves_only_with_registrations(consul: ConsulDouble) -> None:
    consul.register("web", service_id="web-1", port=1, status="passing")
    before = consul.catalog_index
    consul.set_check("service:web-1", "critical")
    consul.service_maintenance("web-1", True)
    consul.node_maintenance(True)
    assert consul.catalog_index == before
    consul.register("web", service_id="web-1", port=1, status="passing")  # identical
    assert consul.catalog_index == before
    consul.register("web", service_id="web-1", port=2, status="passing")
    assert consul.catalog_index > before


def test_catalog_nodes(consul: ConsulDouble) -> None:
    resp = call(consul, "GET", "/v1/catalog/nodes")
    assert resp.status == 200
    (node,) = resp.json()
    health = call(consul, "GET", "/v1/health/service/consul").json()
    assert node == health[0]["Node"]  # the Node fields as health/service gives them
    assert node["Node"] == "dev-plain" and node["Address"] == "127.0.0.1"
    index = resp.index
    consul.add_node("b-node", "10.0.0.2")
    consul.add_node("a-node", "10.0.0.3")
    nodes = call(consul, "GET", "/v1/catalog/nodes").json()
    assert [n["Node"] for n in nodes] == ["a-node", "b-node", "dev-plain"]
    assert call(consul, "GET", "/v1/catalog/nodes").index > index
    only = call(consul, "GET", "/v1/catalog/nodes", {"filter": 'Address == "10.0.0.2"'}).json()
    assert [n["Node"] for n in only] == ["b-node"]
    assert call(consul, "PUT", "/v1/catalog/nodes").status == 405


def test_catalog_nodes_blocks_on_the_nodes_table(consul: ConsulDouble) -> None:
    consul.add_node("b-node", "10.0.0.2")
    index = call(consul, "GET", "/v1/catalog/nodes").index
    future = background(
        lambda: call(consul, "GET", "/v1/catalog/nodes", {"index": str(index), "wait": LONG_WAIT})
    )
    assert consul.wait_for_blocked(1, path_prefix="/v1/catalog/nodes")
    consul.register("web", service_id="web-1", port=80, status="passing")  # services, checks
    consul.set_check("service:web-1", "critical")
    assert call(consul, "GET", "/v1/catalog/nodes").index == index  # nothing to wake it for
    time.sleep(0.05)
    assert not future.done()
    catalog_index = consul.catalog_index
    consul.add_node("b-node", "10.0.0.9")  # re-registered with a new address
    resp = future.result()
    assert resp.index > index and resp.elapsed < WOKEN_WITHIN
    assert [p.outcome for p in consul.parked_queries] == ["changed"]
    assert {n["Node"]: n["Address"] for n in resp.json()}["b-node"] == "10.0.0.9"
    assert consul.catalog_index == catalog_index  # catalog/services did not move


def test_node_services(consul: ConsulDouble) -> None:
    consul.add_node("b-node", "10.0.0.2")
    consul.register("web", service_id="web-2", address="10.1.0.2", port=80, tags=["a"],
                    meta={"k": "v"}, status="passing", node="b-node")  # fmt: skip
    consul.register("db", service_id="db-1", port=5432, node="b-node")
    consul.register("web", service_id="web-1", address="10.1.0.1", port=80, tags=["a"])
    resp = call(consul, "GET", "/v1/catalog/node-services/b-node")
    assert resp.status == 200
    assert resp.index == consul.catalog_index
    body = resp.json()
    assert body["Node"] == call(consul, "GET", "/v1/catalog/nodes").json()[0]
    assert [s["ID"] for s in body["Services"]] == ["db-1", "web-2"]
    web = call(consul, "GET", "/v1/health/service/web").json()
    by_id = {e["Service"]["ID"]: e["Service"] for e in web}
    assert body["Services"][1] == by_id["web-2"]  # the Service fields as health/service has them
    assert set(body["Services"][1]) >= {
        "ID", "Service", "Tags", "Address", "Meta", "Port", "CreateIndex", "ModifyIndex"
    }  # fmt: skip
    # case-insensitive node name, as Consul's memdb index
    assert call(consul, "GET", "/v1/catalog/node-services/B-NODE").json() == body
    # an unknown node: 200 with no node and no services
    unknown = call(consul, "GET", "/v1/catalog/node-services/nope")
    assert (unknown.status, unknown.json()) == (200, {"Node": None, "Services": []})
    filtered = call(
        consul, "GET", "/v1/catalog/node-services/b-node", {"filter": '"a" in Tags'}
    ).json()
    assert [s["ID"] for s in filtered["Services"]] == ["web-2"]
    bad = call(consul, "GET", "/v1/catalog/node-services/b-node", {"filter": "Nope == 1"})
    assert bad.status == 500
    pretty = call(consul, "GET", "/v1/catalog/node-services/b-node", {"pretty": ""})
    assert pretty.json() == body and b"\n    " in pretty.body


def test_node_services_modify_index_and_blocking(consul: ConsulDouble) -> None:
    consul.register("web", service_id="web-1", address="10.1.0.1", port=80, status="passing")
    consul.register("db", service_id="db-1", address="10.1.0.2", port=5432)

    def services() -> dict[str, int]:
        body = call(consul, "GET", "/v1/catalog/node-services/dev-plain").json()
        return {s["ID"]: s["ModifyIndex"] for s in body["Services"]}

    before = services()
    index = call(consul, "GET", "/v1/catalog/node-services/dev-plain").index
    future = background(
        lambda: call(
            consul,
            "GET",
            "/v1/catalog/node-services/dev-plain",
            {"index": str(index), "wait": LONG_WAIT},
        )
    )
    assert consul.wait_for_blocked(1, path_prefix="/v1/catalog/node-services/")
    consul.set_check("service:web-1", "critical")  # checks only: no wake-up
    assert call(consul, "GET", "/v1/catalog/node-services/dev-plain").index == index
    time.sleep(0.05)
    assert not future.done()
    # in place: a new address; the catalog body does not change, the ModifyIndex does
    consul.register("web", service_id="web-1", address="10.1.0.9", port=80, status="passing")
    resp = future.result()
    assert resp.index == consul.catalog_index > index
    assert resp.elapsed < WOKEN_WITHIN
    assert [p.outcome for p in consul.parked_queries] == ["changed"]
    after = {s["ID"]: s["ModifyIndex"] for s in resp.json()["Services"]}
    assert after["web-1"] == consul.catalog_index > before["web-1"]
    assert after["db-1"] == before["db-1"]
    consul.add_node("b-node", "10.0.0.2")  # the nodes table moves the index too
    assert call(consul, "GET", "/v1/catalog/node-services/dev-plain").index > resp.index


def test_snapshot_restore_takes_indexes_back_and_wakes_blocking_queries(
    consul: ConsulDouble,
) -> None:
    consul.register("web", service_id="web-1", address="10.1.0.1", port=80, tags=["k"],
                    status="passing")  # fmt: skip
    saved = consul.save_snapshot()
    saved_index = call(consul, "GET", "/v1/catalog/services").index
    consul.register("web", service_id="web-1", address="10.1.0.9", port=80, tags=["k"],
                    status="passing")  # fmt: skip
    consul.register("db", service_id="db-1", address="10.1.0.2", port=5432)
    before = call(consul, "GET", "/v1/catalog/services")
    raft = consul.index
    future = background(
        lambda: call(
            consul, "GET", "/v1/catalog/services", {"index": str(before.index), "wait": "10m"}
        )
    )
    assert consul.wait_for_blocked(1, path_prefix="/v1/catalog/services")
    consul.restore_snapshot(saved)
    # woken by the restore, long before its wait (30 s here) would end
    resp = future.result(timeout=15)
    assert [p.outcome for p in consul.parked_queries] == ["restored"]
    assert resp.index == saved_index < before.index  # the index went backwards
    assert set(resp.json()) == {"consul", "web"}
    (entry,) = call(consul, "GET", "/v1/health/service/web").json()
    assert entry["Service"]["Address"] == "10.1.0.1"
    assert entry["Service"]["ModifyIndex"] <= saved_index
    # later writes get indexes above every earlier one (the raft index is not restored)
    consul.register("db", service_id="db-1", address="10.1.0.2", port=5432)
    assert call(consul, "GET", "/v1/catalog/services").index > max(raft, before.index)


def test_health_service_ordering_across_nodes(consul: ConsulDouble) -> None:
    consul.add_node("b-node", "10.0.0.2")
    consul.add_node("A-node", "10.0.0.1")
    consul.register("web", service_id="web-2", node="b-node", status="passing")
    consul.register("web", service_id="web-1", node="b-node", status="passing")
    consul.register("web", service_id="Web-3", node="A-node", status="passing")
    consul.register("web", service_id="web-0", status="passing")
    entries = call(consul, "GET", "/v1/health/service/web").json()
    assert [(e["Node"]["Node"], e["Service"]["ID"]) for e in entries] == [
        ("A-node", "Web-3"),
        ("b-node", "web-1"),
        ("b-node", "web-2"),
        ("dev-plain", "web-0"),
    ]
    assert entries[0]["Node"]["Address"] == "10.0.0.1"
    assert entries[0]["Node"]["TaggedAddresses"]["lan_ipv4"] == "10.0.0.1"


def test_node_checks_come_before_service_checks(consul: ConsulDouble) -> None:
    consul.register(
        "web",
        service_id="web-1",
        checks=[
            {"CheckID": "a-check", "TTL": "1m", "Status": "passing"},
            {"CheckID": "Z-check", "TTL": "1m", "Status": "passing"},
        ],
    )
    consul.service_maintenance("web-1", True, "why")
    consul.node_maintenance(True, "patching")
    checks = call(consul, "GET", "/v1/health/service/web").json()[0]["Checks"]
    assert [c["CheckID"] for c in checks] == [
        "_node_maintenance",
        "serfHealth",
        "_service_maintenance:web-1",
        "a-check",
        "Z-check",
    ]
    assert checks[0]["Notes"] == "patching"
    assert checks[2]["Notes"] == "why"


def test_default_maintenance_reasons(consul: ConsulDouble) -> None:
    consul.register("web", service_id="web-1")
    assert (
        call(consul, "PUT", "/v1/agent/service/maintenance/web-1", {"enable": "true"}).status == 200
    )
    assert call(consul, "PUT", "/v1/agent/maintenance", {"enable": "1"}).status == 200
    checks = call(consul, "GET", "/v1/health/service/web").json()[0]["Checks"]
    notes = {c["CheckID"]: c["Notes"] for c in checks}
    assert "no reason was provided" in notes["_node_maintenance"]
    assert "no reason was provided" in notes["_service_maintenance:web-1"]


def test_maintenance_errors(consul: ConsulDouble) -> None:
    resp = call(consul, "PUT", "/v1/agent/service/maintenance/nope", {"enable": "true"})
    assert (resp.status, resp.body) == (404, b'No service registered with ID "nope"')
    resp = call(consul, "PUT", "/v1/agent/maintenance")
    assert (resp.status, resp.body) == (400, b"Missing value for enable")
    assert call(consul, "PUT", "/v1/agent/maintenance", {"enable": "maybe"}).status == 400


def test_tagged_addresses_are_filled_in(consul: ConsulDouble) -> None:
    cases = {
        "v4": ("10.0.0.1", None, {"lan_ipv4": ("10.0.0.1", 80), "wan_ipv4": ("10.0.0.1", 80)}),
        "v6": ("fd00::1", None, {"lan_ipv6": ("fd00::1", 80), "wan_ipv6": ("fd00::1", 80)}),
        "mapped": (
            "::ffff:10.0.0.2",
            None,
            {"lan_ipv4": ("::ffff:10.0.0.2", 80), "wan_ipv4": ("::ffff:10.0.0.2", 80)},
        ),
        "host": ("nas.example", None, None),
        "empty": ("", None, None),
        "partial": (
            "10.0.0.3",
            {"wan_ipv4": {"Address": "203.0.113.3", "Port": 8080}},
            {"lan_ipv4": ("10.0.0.3", 80), "wan_ipv4": ("203.0.113.3", 8080)},
        ),
        "custom": ("", {"lan": {"Address": "10.9.9.9"}}, {"lan": ("10.9.9.9", 0)}),
    }
    for sid, (address, explicit, _) in cases.items():
        consul.register("svc", service_id=sid, address=address, port=80, tagged_addresses=explicit)
    entries = {
        e["Service"]["ID"]: e["Service"]
        for e in call(consul, "GET", "/v1/health/service/svc").json()
    }
    for sid, (_, _, expected) in cases.items():
        service = entries[sid]
        if expected is None:
            assert "TaggedAddresses" not in service
        else:
            assert service["TaggedAddresses"] == {
                k: {"Address": a, "Port": p} for k, (a, p) in sorted(expected.items())
            }
            assert list(service["TaggedAddresses"]) == sorted(expected)


def test_meta_null_tags_empty_and_kind_only_when_set(consul: ConsulDouble) -> None:
    consul.register("plain", service_id="p-1")
    consul.register(
        "proxy",
        service_id="x-1",
        kind="connect-proxy",
        proxy={"DestinationServiceName": "plain"},
        meta={"b": "2", "a": "1"},
    )
    plain_svc = call(consul, "GET", "/v1/health/service/plain").json()[0]["Service"]
    assert plain_svc["Meta"] is None
    assert plain_svc["Tags"] == []
    assert "Kind" not in plain_svc
    proxy_svc = call(consul, "GET", "/v1/health/service/proxy").json()[0]["Service"]
    assert next(iter(proxy_svc)) == "Kind"
    assert proxy_svc["Proxy"] == {
        "DestinationServiceName": "plain",
        "Mode": "",
        "MeshGateway": {},
        "Expose": {},
    }
    assert list(proxy_svc["Meta"]) == ["a", "b"]


def test_passing_filter_variants(consul: ConsulDouble) -> None:
    consul.register("web", service_id="ok", status="passing")
    consul.register("web", service_id="warn", status="warning")
    consul.register("web", service_id="bare")  # no checks: counts as passing
    for value in ("", "true", "1", "T"):
        ids = [
            e["Service"]["ID"]
            for e in call(consul, "GET", "/v1/health/service/web", {"passing": value}).json()
        ]
        assert ids == ["bare", "ok"]
    ids = [
        e["Service"]["ID"]
        for e in call(consul, "GET", "/v1/health/service/web", {"passing": "false"}).json()
    ]
    assert ids == ["bare", "ok", "warn"]


def test_tag_filter_requires_every_tag_case_insensitively(consul: ConsulDouble) -> None:
    consul.register("web", service_id="a", tags=["Blue", "canary"])
    consul.register("web", service_id="b", tags=["blue"])
    resp = call(consul, "GET", "/v1/health/service/web", {"tag": ["blue", "CANARY"]})
    assert [e["Service"]["ID"] for e in resp.json()] == ["a"]
    resp = call(consul, "GET", "/v1/health/service/web", {"tag": "blue"})
    assert [e["Service"]["ID"] for e in resp.json()] == ["a", "b"]


def test_health_service_filter(consul: ConsulDouble) -> None:
    consul.register("web", service_id="a", tags=["x"], meta={"zone": "1"}, status="passing")
    consul.register("web", service_id="b", tags=["y"], meta={"zone": "2"}, status="critical")
    cases = {
        '"x" in Service.Tags': ["a"],
        'Service.Meta.zone == "2"': ["b"],
        'Service.Meta["zone"] != "2"': ["a"],
        "Checks.Status == critical": ["b"],
        'Node.Node == "dev-plain" and not (Service.ID == a)': ["b"],
    }
    for expr, expected in cases.items():
        resp = call(consul, "GET", "/v1/health/service/web", {"filter": expr})
        assert [e["Service"]["ID"] for e in resp.json()] == expected, expr
    bad = call(consul, "GET", "/v1/health/service/web", {"filter": "Bogus == 1"})
    assert bad.status == 500
    assert bad.header("X-Consul-Index") is None


def test_health_state_filter_and_states(consul: ConsulDouble) -> None:
    consul.register("web", service_id="web-1", tags=["kubernetes"], status="passing")
    consul.register("db", service_id="db-1", tags=["other"], status="critical")
    expr = 'ServiceID == "" or "kubernetes" in ServiceTags'
    checks = call(consul, "GET", "/v1/health/state/any", {"filter": expr}).json()
    assert [c["CheckID"] for c in checks] == ["serfHealth", "service:web-1"]
    critical = call(consul, "GET", "/v1/health/state/critical").json()
    assert [c["CheckID"] for c in critical] == ["service:db-1"]
    not_in = call(
        consul,
        "GET",
        "/v1/health/state/any",
        {"filter": '"kubernetes" not in ServiceTags and ServiceID != ""'},
    ).json()
    assert [c["CheckID"] for c in not_in] == ["service:db-1"]
    bad = call(consul, "GET", "/v1/health/state/any", {"filter": "Nope == 1"})
    assert bad.status == 500
    assert bad.header("X-Consul-Index") == "1"
    assert bad.body == b'Selector "Nope" is not valid'
    assert call(consul, "GET", "/v1/health/state/bogus").status == 400


def test_stale_consistent_conflict_and_bad_params(consul: ConsulDouble) -> None:
    resp = call(consul, "GET", "/v1/health/service/web", {"stale": "", "consistent": ""})
    assert resp.status == 400
    assert resp.kept_headers() == {
        "X-Consul-Default-Acl-Policy": "allow",
        "Content-Type": "text/plain; charset=utf-8",
    }
    assert call(consul, "GET", "/v1/catalog/services", {"index": "-1"}).body == b"Invalid index"
    assert call(consul, "GET", "/v1/catalog/services", {"wait": "10"}).body == b"Invalid wait time"


def test_cached_views(consul: ConsulDouble) -> None:
    consul.register("web", service_id="web-1")
    first = call(consul, "GET", "/v1/health/service/web", {"cached": ""})
    second = call(consul, "GET", "/v1/health/service/web", {"cached": ""})
    assert (first.header("X-Cache"), first.header("Age")) == ("MISS", None)
    assert (second.header("X-Cache"), second.header("Age")) == ("HIT", "0")
    assert second.header("X-Consul-Query-Backend") == "streaming"
    assert second.header("X-Consul-Knownleader") == "false"
    plain = call(consul, "GET", "/v1/health/service/web")
    assert plain.header("X-Cache") is None
    assert plain.header("X-Consul-Query-Backend") == "blocking-query"


def test_unknown_name_index_and_extinction(consul: ConsulDouble) -> None:
    resp = call(consul, "GET", "/v1/health/service/never")
    assert resp.json() == []
    assert resp.index >= 1
    consul.register("gone", service_id="gone-1")
    consul.deregister("gone-1")
    extinct_at = consul.index
    assert call(consul, "GET", "/v1/health/service/gone").index == extinct_at
    assert call(consul, "GET", "/v1/health/service/never").index == extinct_at


# -------------------------------------------------------------------------- blocking queries


def test_blocking_wakes_on_registration_not_on_unrelated_service(consul: ConsulDouble) -> None:
    consul.register("web", service_id="web-1", status="passing")
    consul.register("db", service_id="db-1", status="passing")
    index = consul.service_index("web")
    future = background(
        lambda: call(
            consul, "GET", "/v1/health/service/web", {"index": str(index), "wait": LONG_WAIT}
        )
    )
    assert consul.wait_for_blocked(1)
    consul.set_check("service:db-1", "critical")  # another service: no wake-up
    consul.register("db", service_id="db-2")
    assert consul.service_index("web") == index  # nothing to wake it for
    time.sleep(0.05)
    assert not future.done()
    consul.set_check("service:web-1", "warning")
    resp = future.result()
    assert resp.index > index
    assert resp.elapsed < WOKEN_WITHIN
    assert [p.outcome for p in consul.parked_queries] == ["changed"]
    assert resp.json()[0]["Checks"][1]["Status"] == "warning"


def test_node_level_check_wakes_every_service_on_the_node(consul: ConsulDouble) -> None:
    consul.register("web", service_id="web-1")
    consul.register("db", service_id="db-1")
    futures = [
        background(
            lambda name=name: call(  # type: ignore[misc]
                consul,
                "GET",
                f"/v1/health/service/{name}",
                {"index": str(consul.service_index(name)), "wait": LONG_WAIT},
            )
        )
        for name in ("web", "db")
    ]
    assert consul.wait_for_blocked(2)
    consul.node_maintenance(True)
    for future in futures:
        resp = future.result()
        assert resp.elapsed < WOKEN_WITHIN
        assert resp.json()[0]["Checks"][0]["CheckID"] == "_node_maintenance"
    assert [p.outcome for p in consul.parked_queries] == ["changed", "changed"]


def test_same_status_update_neither_wakes_nor_changes_output(consul: ConsulDouble) -> None:
    consul.register("web", service_id="web-1", check={"TTL": "10m"})  # starts critical
    index = consul.service_index("web")
    assert (
        call(consul, "PUT", "/v1/agent/check/fail/service:web-1", {"note": "new note"}).status
        == 200
    )
    assert consul.service_index("web") == index
    check = call(consul, "GET", "/v1/health/service/web").json()[0]["Checks"][1]
    assert check["Output"] == ""
    assert (
        call(
            consul,
            "PUT",
            "/v1/agent/check/update/service:web-1",
            body={"Status": "passing", "Output": "fine"},
        ).status
        == 200
    )
    check = call(consul, "GET", "/v1/health/service/web").json()[0]["Checks"][1]
    assert (check["Status"], check["Output"]) == ("passing", "fine")


def test_default_and_maximum_wait() -> None:
    scale = 0.001  # 5 min -> 0.3 s, 10 min -> 0.6 s, an uncapped hour -> 3.6 s
    hour = 3600 * scale
    with ConsulDouble(time_scale=scale) as c:
        index = str(c.catalog_index)
        default = call(c, "GET", "/v1/catalog/services", {"index": index})
        capped = call(c, "GET", "/v1/catalog/services", {"index": index, "wait": "1h"})
        streaming = call(
            c,
            "GET",
            "/v1/health/service/consul",
            {"index": str(c.service_index("consul")), "wait": "0s"},
        )
        chosen = c.parked_queries
        # the waits the double chose: 5 min by default, at most 10 min, jitter up to wait/16
        # on the blocking-query backend, none on the streaming one
        assert [p.outcome for p in chosen] == ["timeout"] * 3
        assert 300 <= chosen[0].wait <= 300 * (1 + 1 / 16)
        assert 600 <= chosen[1].wait <= 600 * (1 + 1 / 16)
        assert chosen[2].wait == 300
        # and it blocked that long: well short of an hour even with a loaded machine's slack
        assert 300 * scale * 0.98 <= default.elapsed < hour
        assert 600 * scale * 0.98 <= capped.elapsed < hour
        assert 300 * scale * 0.98 <= streaming.elapsed < hour


def test_index_ahead_waits_then_returns_smaller_index(consul: ConsulDouble) -> None:
    resp = call(consul, "GET", "/v1/health/state/any", {"index": "100000", "wait": "2s"})
    assert resp.elapsed >= 2 * SCALE * 0.98
    assert resp.index == consul.checks_index < 100000


def test_many_waiters_are_all_woken(consul: ConsulDouble) -> None:
    index = str(consul.catalog_index)
    futures = [
        background(
            lambda: call(consul, "GET", "/v1/catalog/services", {"index": index, "wait": LONG_WAIT})
        )
        for _ in range(20)
    ]
    assert consul.wait_for_blocked(20, timeout=30)
    assert consul.blocked_queries == 20
    consul.register("new", service_id="new-1")
    assert all("new" in f.result().json() for f in futures)
    assert all(f.result().elapsed < WOKEN_WITHIN for f in futures)
    assert [p.outcome for p in consul.parked_queries] == ["changed"] * 20
    assert consul.blocked_queries == 0


# ------------------------------------------------------------------------------- agent writes


def test_register_validation_and_reregistration(consul: ConsulDouble) -> None:
    resp = call(consul, "PUT", "/v1/agent/service/register", body={"Port": 1})
    assert (resp.status, resp.body) == (400, b"Missing service name")
    resp = call(consul, "PUT", "/v1/agent/service/register", body=b"{not json")
    assert resp.status == 400
    assert resp.body.startswith(b"Request decode failed")
    register(consul, {"name": "web", "port": 80, "tags": ["a"]})  # Go decodes case-insensitively
    assert consul.service_ids("web") == ["web"]
    register(
        consul,
        {"ID": "web-1", "Name": "web", "Port": 80, "Check": {"TTL": "1m", "Status": "warning"}},
    )
    created = call(consul, "GET", "/v1/health/service/web").json()[1]
    register(
        consul,
        {"ID": "web-1", "Name": "web", "Port": 81, "Check": {"TTL": "1m", "Status": "passing"}},
    )
    updated = call(consul, "GET", "/v1/health/service/web").json()[1]
    assert updated["Service"]["CreateIndex"] == created["Service"]["CreateIndex"]
    assert updated["Service"]["ModifyIndex"] > created["Service"]["ModifyIndex"]
    assert updated["Checks"][1]["Status"] == "warning"  # status survives re-registration
    assert updated["Checks"][1]["ModifyIndex"] == created["Checks"][1]["ModifyIndex"]


def test_multiple_checks_get_numbered_ids(consul: ConsulDouble) -> None:
    register(
        consul,
        {
            "ID": "web-1",
            "Name": "web",
            "Check": {"TTL": "1m"},
            "Checks": [{"HTTP": "http://x", "Interval": "10s"}],
        },
    )
    checks = call(consul, "GET", "/v1/health/service/web").json()[0]["Checks"]
    assert [(c["CheckID"], c["Type"]) for c in checks[1:]] == [
        ("service:web-1:1", "ttl"),
        ("service:web-1:2", "http"),
    ]
    assert checks[2]["Interval"] == "10s"
    resp = call(consul, "PUT", "/v1/agent/check/pass/service:web-1:2")
    assert resp.body == b'CheckID "service:web-1:2" does not have associated TTL'


def test_python_api(consul: ConsulDouble) -> None:
    names = consul.populate(3, 2, name_format="app-{}")
    assert names == ["app-0", "app-1", "app-2"]
    assert consul.service_ids("APP-1") == ["app-1-1", "app-1-2"]
    assert consul.check_status("service:app-1-1") == "passing"
    assert consul.set_check("service:app-1-1", "critical", "down") is True
    assert consul.set_check("service:app-1-1", "critical", "still down") is False
    with pytest.raises(KeyError):
        consul.set_check("nope", "passing")
    with pytest.raises(ValueError, match="Missing service name"):
        consul.register_definition({"Port": 1})
    assert consul.deregister("app-0-1") is True
    assert consul.deregister("app-0-1") is False
    consul.add_node("other", "fd00::9")
    consul.register("app-0", service_id="app-0-9", node="other")
    consul.set_check("serfHealth", "critical", node="other")
    entry = next(
        e
        for e in call(consul, "GET", "/v1/health/service/app-0").json()
        if e["Node"]["Node"] == "other"
    )
    assert entry["Checks"][0]["Status"] == "critical"
    assert entry["Node"]["TaggedAddresses"]["lan_ipv6"] == "fd00::9"
    consul.remove_node("other")
    assert consul.service_ids("app-0") == ["app-0-2"]
    before = consul.index
    consul.register_many([{"Name": "bulk", "ID": f"bulk-{i}"} for i in range(10)])
    assert consul.index == before + 1
    consul.set_checks([("service:app-2-1", "warning"), ("service:app-2-2", "warning")])
    assert consul.index == before + 2


@pytest.mark.slow
def test_ten_thousand_services_stay_fast() -> None:
    """Work per operation does not grow with the catalog.

    The same work is timed against 1,000 and against 10,000 services in the same run (rounds
    interleaved, the best of each kept), so a slow or loaded machine slows both sides alike:
    against 10,000 it may cost at most a few times what it costs against 1,000, where work that
    grew with the catalog would cost ten times. Latency targets belong in bench/.
    """
    growth = 3.0  # allowed cost ratio 10k / 1k per operation; linear growth would be 10

    def timed(action: Callable[..., object], *args: Any, **kwargs: Any) -> float:
        started = time.monotonic()
        action(*args, **kwargs)
        return time.monotonic() - started

    with ConsulDouble() as small, ConsulDouble() as big:
        # registering 1,000 more services into 7,000-9,000 costs about what into none does
        big.populate(7_000, 3)
        into_none: list[float] = []
        into_many: list[float] = []
        for round_ in range(3):
            with ConsulDouble() as empty:
                into_none.append(timed(empty.populate, 1_000, 3))
            into_many.append(timed(big.populate, 1_000, 3, name_format=f"more{round_}-{{:05d}}"))
        assert min(into_many) <= growth * min(into_none)
        assert len(call(big, "GET", "/v1/catalog/services").json()) == 10_001
        small.populate(1_000, 3)
        sizes = {small: 1_000, big: 7_000}  # the svc-NNNNN names in each
        conns = {c: http.client.HTTPConnection("127.0.0.1", c.port, timeout=60) for c in sizes}
        try:
            reads: dict[ConsulDouble, list[float]] = {small: [], big: []}
            flips: dict[ConsulDouble, list[float]] = {small: [], big: []}
            for round_ in range(3):
                for c, n in sizes.items():
                    started = time.monotonic()
                    for i in range(0, n, n // 200):
                        entries = call(c, "GET", f"/v1/health/service/svc-{i:05d}", conn=conns[c])
                        assert len(entries.json()) == 3
                    reads[c].append(time.monotonic() - started)
                    status = "critical" if round_ % 2 == 0 else "passing"
                    started = time.monotonic()
                    for i in range(2000):  # the same 2,000 checks in both
                        c.set_check(f"service:svc-{i % 1000:05d}-{1 + i // 1000}", status)
                    flips[c].append(time.monotonic() - started)
            assert min(reads[big]) <= growth * min(reads[small])
            assert min(flips[big]) <= growth * min(flips[small])
            # a repeated filtered health/state is served from a cache, not filtered again
            expr = 'ServiceID == "" or "kubernetes" in ServiceTags'
            filtered = call(big, "GET", "/v1/health/state/any", {"filter": expr}, conn=conns[big])
            assert len(filtered.json()) == 30_001
            again = [
                call(big, "GET", "/v1/health/state/any", {"filter": expr}, conn=conns[big])
                for _ in range(3)
            ]
            assert all(a.body == filtered.body for a in again)
            assert min(a.elapsed for a in again) < filtered.elapsed / 10
        finally:
            for conn in conns.values():
                conn.close()
        assert small.errors == big.errors == []


# ------------------------------------------------------------------------------------- ACLs


@pytest.fixture
def acl_consul() -> Iterator[ConsulDouble]:
    with ConsulDouble(acl=True, management_token="root", time_scale=SCALE) as double:
        double.register("web", service_id="web-1", status="passing")
        double.register("db", service_id="db-1", status="passing")
        yield double
        assert double.errors == []


def test_acl_rules_forms(acl_consul: ConsulDouble) -> None:
    acl_consul.create_policy(
        "web-prefix",
        'service_prefix "we" { policy = "read" }\n'
        'service "web" { policy = "deny" }\nnode_prefix "" '
        '{ policy = "read" }',
    )
    acl_consul.create_policy("json", json.dumps({"service": {"db": {"policy": "read"}}}))
    token = acl_consul.create_token(["web-prefix", "json"])
    acl_consul.register("webby", service_id="webby-1", status="passing")
    catalog = call(
        acl_consul, "GET", "/v1/catalog/services", headers={"X-Consul-Token": token}
    ).json()
    assert sorted(catalog) == ["db", "webby"]
    state = call(acl_consul, "GET", "/v1/health/state/any", query={"token": token}).json()
    assert {c["ServiceName"] for c in state} == {"", "db", "webby"}


def test_acl_health_needs_node_read(acl_consul: ConsulDouble) -> None:
    acl_consul.create_policy("svc-only", 'service_prefix "" { policy = "read" }')
    token = acl_consul.create_token(["svc-only"])
    resp = call(
        acl_consul, "GET", "/v1/health/service/web", headers={"Authorization": f"Bearer {token}"}
    )
    assert (resp.status, resp.json()) == (200, [])
    assert resp.index == acl_consul.service_index("web")


def test_acl_catalog_nodes_and_node_services(acl_consul: ConsulDouble) -> None:
    acl_consul.add_node("b-node", "10.0.0.2")
    acl_consul.register("web", service_id="web-2", port=80, node="b-node")
    acl_consul.create_policy(
        "some", 'node "b-node" { policy = "read" }\nservice_prefix "we" { policy = "read" }'
    )
    token = acl_consul.create_token(["some"])
    headers = {"X-Consul-Token": token}
    nodes = call(acl_consul, "GET", "/v1/catalog/nodes", headers=headers).json()
    assert [n["Node"] for n in nodes] == ["b-node"]
    assert call(acl_consul, "GET", "/v1/catalog/nodes").json() == []  # anonymous: nothing
    mine = call(acl_consul, "GET", "/v1/catalog/node-services/b-node", headers=headers).json()
    assert mine["Node"]["Node"] == "b-node" and [s["ID"] for s in mine["Services"]] == ["web-2"]
    # no node:read on dev-plain: as if the node did not exist
    other = call(acl_consul, "GET", "/v1/catalog/node-services/dev-plain", headers=headers)
    assert (other.status, other.json()) == (200, {"Node": None, "Services": []})
    # service:read filters the services
    acl_consul.create_policy("nodes-only", 'node_prefix "" { policy = "read" }')
    nodes_only = acl_consul.create_token(["nodes-only"])
    body = call(
        acl_consul, "GET", "/v1/catalog/node-services/dev-plain", query={"token": nodes_only}
    ).json()
    assert body["Node"]["Node"] == "dev-plain" and body["Services"] == []
    bad = call(acl_consul, "GET", "/v1/catalog/nodes", headers={"X-Consul-Token": "nope"})
    assert bad.status == 403


def test_acl_writes(acl_consul: ConsulDouble) -> None:
    acl_consul.create_policy("web-write", 'service "web" { policy = "write" }')
    writer = acl_consul.create_token(["web-write"])
    headers = {"X-Consul-Token": writer}
    ok = call(acl_consul, "PUT", "/v1/agent/check/warn/service:web-1", headers=headers)
    assert ok.status == 200
    denied = call(acl_consul, "PUT", "/v1/agent/check/warn/service:db-1", headers=headers)
    assert (denied.status, denied.body) == (403, b"Permission denied: Missing service:write on db")
    denied = call(acl_consul, "PUT", "/v1/agent/maintenance", {"enable": "true"}, headers)
    assert denied.body == b"Permission denied: Missing node:write on dev-plain"
    unknown = call(
        acl_consul,
        "PUT",
        "/v1/agent/service/register",
        headers={"X-Consul-Token": "nope"},
        body={"Name": "web"},
    )
    assert (unknown.status, unknown.body) == (403, b"ACL not found")
    anonymous = call(acl_consul, "PUT", "/v1/agent/service/deregister/web-1")
    assert anonymous.status == 403
    assert (
        call(
            acl_consul,
            "PUT",
            "/v1/agent/service/deregister/web-1",
            headers={"X-Consul-Token": "root"},
        ).status
        == 200
    )


def test_acl_bootstrap_flow() -> None:
    with ConsulDouble(acl=True) as c:
        assert c.management_token is None
        resp = call(c, "PUT", "/v1/acl/bootstrap")
        assert resp.status == 200
        token = resp.json()
        assert list(token) == [
            "AccessorID",
            "SecretID",
            "Description",
            "Policies",
            "Local",
            "CreateTime",
            "Hash",
            "CreateIndex",
            "ModifyIndex",
        ]
        assert token["Policies"] == [
            {"ID": "00000000-0000-0000-0000-000000000001", "Name": "global-management"}
        ]
        assert c.management_token == token["SecretID"]
        again = call(c, "PUT", "/v1/acl/bootstrap")
        assert again.status == 403
        assert again.body.decode() == (
            "Permission denied: ACL bootstrap no longer allowed "
            f"(reset index: {token['CreateIndex']})"
        )
        secret = token["SecretID"]
        headers = {"X-Consul-Token": secret}
        created = call(
            c,
            "PUT",
            "/v1/acl/policy",
            headers=headers,
            body={"Name": "ro", "Rules": 'node_prefix "" { policy = "read" }'},
        )
        assert created.status == 200
        policies = call(c, "GET", "/v1/acl/policies", headers=headers)
        assert [p["Name"] for p in policies.json()] == ["global-management", "ro"]
        assert "Rules" not in policies.json()[1]
        assert policies.header("X-Consul-Index") is not None
        by_name = call(c, "GET", "/v1/acl/policy/name/ro", headers=headers).json()
        assert by_name["Rules"] == 'node_prefix "" { policy = "read" }'
        missing = call(c, "GET", "/v1/acl/policy/name/missing", headers=headers)
        assert (missing.status, missing.body) == (403, b"ACL not found")
        duplicate = call(c, "PUT", "/v1/acl/policy", headers=headers, body={"Name": "ro"})
        assert duplicate.status == 500
        made = call(
            c,
            "PUT",
            "/v1/acl/token",
            headers=headers,
            body={"Description": "t", "Policies": [{"Name": "ro"}], "SecretID": "my-secret"},
        ).json()
        assert made["SecretID"] == "my-secret"
        tokens = call(c, "GET", "/v1/acl/tokens", headers=headers).json()
        assert {t["Description"] for t in tokens} >= {"Anonymous Token", "t"}
        self_token = call(c, "GET", "/v1/acl/token/self", headers={"X-Consul-Token": "my-secret"})
        assert self_token.status == 403  # reading ACLs needs acl:read
        assert call(c, "GET", "/v1/acl/token/self", headers=headers).json()["SecretID"] == secret
        assert call(c, "GET", "/v1/acl/policies").status == 403


def test_acl_api_disabled_without_acls(consul: ConsulDouble) -> None:
    resp = call(consul, "PUT", "/v1/acl/bootstrap")
    assert (resp.status, resp.body) == (401, b"ACL support disabled")


def test_acl_default_allow() -> None:
    with ConsulDouble(acl=True, acl_default_policy="allow") as c:
        c.register("web", service_id="web-1")
        resp = call(c, "GET", "/v1/catalog/services")
        assert resp.header("X-Consul-Default-Acl-Policy") == "allow"
        assert sorted(resp.json()) == ["consul", "web"]


# ------------------------------------------------------------------------ faults and restarts


def test_error_faults_apply_n_times_and_by_prefix(consul: ConsulDouble) -> None:
    fault = consul.inject_fault("error", times=2, path_prefix="/v1/health/", status=503)
    assert call(consul, "GET", "/v1/catalog/services").status == 200
    first = call(consul, "GET", "/v1/health/service/web")
    assert (first.status, first.body) == (503, b"Service Unavailable")
    assert first.header("X-Consul-Default-Acl-Policy") == "allow"
    assert call(consul, "GET", "/v1/health/service/web").status == 503
    assert call(consul, "GET", "/v1/health/service/web").status == 200
    assert fault.hits == 2
    consul.inject_fault("error", times=None)
    assert all(call(consul, "GET", "/v1/status/leader").status == 500 for _ in range(3))
    consul.clear_faults()
    assert call(consul, "GET", "/v1/status/leader").status == 200


def test_connection_faults(consul: ConsulDouble) -> None:
    consul.inject_fault("close")
    with pytest.raises(http.client.RemoteDisconnected):
        call(consul, "GET", "/v1/catalog/services")
    consul.inject_fault("reset")
    with pytest.raises((ConnectionResetError, http.client.RemoteDisconnected)):
        call(consul, "GET", "/v1/catalog/services")
    consul.inject_fault("close_mid_body")
    with pytest.raises(http.client.IncompleteRead):
        call(consul, "GET", "/v1/catalog/services")
    assert call(consul, "GET", "/v1/catalog/services").status == 200


def test_body_faults(consul: ConsulDouble) -> None:
    consul.inject_fault("truncated_json")
    truncated = call(consul, "GET", "/v1/catalog/services")
    assert truncated.status == 200
    with pytest.raises(json.JSONDecodeError):
        truncated.json()
    consul.inject_fault("malformed_json")
    assert call(consul, "GET", "/v1/catalog/services").body == b'{"consul": ['
    consul.inject_fault("huge_body", size=2_000_000)
    huge = call(consul, "GET", "/v1/health/service/consul")
    assert len(huge.body) >= 1_900_000
    assert isinstance(huge.json(), list)


def test_delay_and_hang_faults(consul: ConsulDouble) -> None:
    consul.inject_fault("delay", seconds=0.2)
    assert call(consul, "GET", "/v1/status/leader").elapsed >= 0.19
    consul.inject_fault("hang", seconds=30)
    hung = background(lambda: call(consul, "GET", "/v1/status/leader"))
    time.sleep(0.1)
    assert not hung.done()
    consul.clear_faults()
    with pytest.raises(http.client.RemoteDisconnected):
        hung.result(timeout=5)
    consul.inject_fault("hang", seconds=30)
    with pytest.raises(TimeoutError):  # the client's timeout ends it, not the hang
        call(consul, "GET", "/v1/status/leader", timeout=0.5)
    consul.clear_faults()


def test_stop_and_start_on_the_same_port(consul: ConsulDouble) -> None:
    consul.register("web", service_id="web-1")
    url, port = consul.url, consul.port
    idle = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    assert call(consul, "GET", "/v1/status/leader", conn=idle).status == 200
    parked = background(
        lambda: call(
            consul,
            "GET",
            "/v1/catalog/services",
            {"index": str(consul.catalog_index), "wait": LONG_WAIT},
        )
    )
    assert consul.wait_for_blocked(1)
    consul.stop()
    assert not consul.running
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        parked.result(timeout=5)
    assert consul.current_connections == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    idle.close()
    consul.start()
    assert (consul.url, consul.port) == (url, port)
    assert [e["Service"]["ID"] for e in call(consul, "GET", "/v1/health/service/web").json()] == [
        "web-1"
    ]


# ------------------------------------------------------------------------------- unit helpers


def test_parse_go_duration() -> None:
    assert parse_go_duration("10s") == 10
    assert parse_go_duration("1m30s") == 90
    assert parse_go_duration("250ms") == pytest.approx(0.25)
    assert parse_go_duration("1.5h") == 5400
    assert parse_go_duration("0") == 0
    for bad in ("10", "xyz", "", "1d", "s"):
        with pytest.raises(ValueError):
            parse_go_duration(bad)


def test_go_json_escapes_like_go() -> None:
    assert go_json({"a": "<&>"}) == b'{"a":"\\u003c\\u0026\\u003e"}'
    assert go_json([1], pretty=True) == b"[\n    1\n]\n"


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('ServiceID == ""', True),
        ('"kubernetes" in ServiceTags', True),
        ("kubernetes in ServiceTags", True),
        ('"k8s" not in ServiceTags', True),
        ("Status != passing", False),
        ('not (Status == "passing") or Node == "n1"', True),
        ("ServiceTags contains kubernetes and ServiceTags is not empty", True),
        ("Output is empty", True),
        ('Name matches "^Serf"', True),
        ("ExposedPort == 0 and Status == `passing`", True),
        ('ServiceID == "" and (Status == "critical" or Node == "n2")', False),
    ],
)
def test_filter_expressions(expr: str, expected: bool) -> None:
    check = {
        "Node": "n1",
        "CheckID": "serfHealth",
        "Name": "Serf Health Status",
        "Status": "passing",
        "Output": "",
        "ServiceID": "",
        "ServiceTags": ["kubernetes"],
        "ExposedPort": 0,
    }
    assert compile_filter(expr)(check) is expected


@pytest.mark.parametrize(
    "expr",
    [
        "",
        "Status ==",
        "(Status == a",
        "Status = a",
        "a in",
        "Status == a extra",
        'Name matches "("',
    ],
)
def test_filter_syntax_errors(expr: str) -> None:
    with pytest.raises(FilterError):
        compile_filter(expr)


def test_parse_rules() -> None:
    rules = parse_rules(
        '# comment\nservice_prefix "" { policy = "read" }\n'
        'service "web" {\n  policy = "write"\n  intentions = "read"\n}\n'
        'node_prefix "" { policy = "read" }\nacl = "read"\n'
    )
    assert rules.prefix == {"service": {"": "read"}, "node": {"": "read"}}
    assert rules.exact == {"service": {"web": "write"}}
    assert rules.top == {"acl": "read"}
    for bad in (
        'service "x" { policy = "sometimes" }',
        'bogus "x" { policy = "read" }',
        'service "x" {',
        'acl = "nope"',
    ):
        with pytest.raises(PolicyError):
            parse_rules(bad)


def test_requests_are_logged(consul: ConsulDouble) -> None:
    call(consul, "GET", "/v1/catalog/services", {"stale": ""})
    call(consul, "GET", "/v1/health/service/web")
    assert consul.request_count("/v1/health/") == 1
    (first, _) = consul.requests
    assert first.query == {"stale": [""]}
    consul.clear_requests()
    assert consul.requests == []


def test_threads_do_not_leak_after_stop() -> None:
    before = threading.active_count()
    with ConsulDouble() as c:
        for _ in range(5):
            call(c, "GET", "/v1/status/leader")
    deadline = time.monotonic() + 30
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= before
