"""The planner: table tests for every rule, property tests for the laws."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consul_sync.model import Action, DesiredService, Endpoint, Observed, Port, Snapshot
from consul_sync.plan import Policy, PruneBudget, apply_to, merge, plan
from consul_sync.testing import service


def owned(*services: DesiredService) -> dict:
    return {s.key: Observed(s.key, True, s, s.sources) for s in services}


def actions(result) -> list[tuple[str, str]]:
    return [(c.action.value, c.key[1]) for c in result.changes]


# --- table tests ------------------------------------------------------------

A = service("a", "10.0.0.1")
A2 = service("a", "10.0.0.2")
B = service("b", "10.0.0.3")


@pytest.mark.parametrize(
    ("desired", "observed", "policy", "expected"),
    [
        ([A], {}, Policy.SYNC, [("create", "a")]),
        ([A2], owned(A), Policy.SYNC, [("update", "a")]),
        ([A], owned(A), Policy.SYNC, []),
        ([], owned(A), Policy.SYNC, [("delete", "a")]),
        ([A2], owned(A), Policy.UPSERT_ONLY, [("update", "a")]),
        ([], owned(A), Policy.UPSERT_ONLY, []),
        ([A2, B], owned(A), Policy.CREATE_ONLY, [("create", "b")]),
        ([], owned(A), Policy.CREATE_ONLY, []),
    ],
    ids=[
        "create",
        "update",
        "no-op",
        "delete",
        "upsert-updates",
        "upsert-never-deletes",
        "create-only-creates",
        "create-only-never-deletes",
    ],
)
def test_policies(desired, observed, policy, expected) -> None:
    result = plan({s.key: s for s in desired}, observed, policy=policy)
    assert actions(result) == expected


def test_foreign_object_is_a_conflict_never_a_write() -> None:
    foreign = {A.key: Observed(A.key, owned=False)}
    result = plan({A.key: A}, foreign)
    assert result.changes == ()
    assert result.conflicts == (A.key,)
    # and never deleted either
    assert plan({}, foreign).changes == ()


def test_no_delete_for_an_incomplete_source() -> None:
    result = plan({}, owned(A), incomplete_sources={"fake"})
    assert result.changes == ()
    assert result.withheld == (A.key,)


def test_delete_allowed_when_another_source_is_incomplete() -> None:
    other = service("z", "10.9.9.9", source="other")
    result = plan({}, owned(A, other), incomplete_sources={"other"})
    assert actions(result) == [("delete", "a")]
    assert result.withheld == (other.key,)


def test_unknown_origin_waits_for_every_source() -> None:
    adopted = {A.key: Observed(A.key, True, A, None)}
    assert plan({}, adopted, incomplete_sources={"x"}).changes == ()
    assert actions(plan({}, adopted)) == [("delete", "a")]


def test_prune_guard_holds_deletes_past_the_budget() -> None:
    many = [service(f"s{i}", f"10.0.1.{i}") for i in range(10)]
    result = plan({}, owned(*many))  # deleting 10 of 10: a fresh window allows 5
    assert result.changes == ()  # a sudden mass disappearance deletes nothing
    assert result.guard is not None and "holding 10 deletes back" in result.guard
    assert result.held == tuple(s.key for s in many) == result.withheld
    # held deletes planned again when their window rolled go in part
    result = plan({}, owned(*many), delete_budget=5, partial=True)
    assert actions(result) == [("delete", f"s{i}") for i in range(5)]
    assert result.held == tuple(s.key for s in many[5:])
    # the runtime's budget says how many are left in this window
    assert plan({}, owned(*many[:4]), delete_budget=3).held == tuple(s.key for s in many[:4])
    assert plan({}, owned(*many[:4]), delete_budget=4).count(Action.DELETE) == 4


def test_prune_budget_spans_passes_within_a_window() -> None:
    budget = PruneBudget(fraction=0.5, window=600)
    assert budget.remaining(0.0, owned=12) == 6 and budget.rolls_at() is None
    budget.spend(0.0, owned=12, count=3)  # a trickle: 3 now...
    assert budget.remaining(1.0, owned=9) == 3  # ...measured against the 12 at the start
    budget.spend(1.0, owned=9, count=3)
    assert budget.remaining(2.0, owned=6) == 0
    assert budget.rolls_at() == 600.0
    # the window rolls: a new one measures what is owned then
    assert budget.remaining(600.0, owned=6) == 3
    # holding deletes opens a window (so that it rolls) without spending
    holding = PruneBudget(fraction=0.5, window=600)
    holding.spend(5.0, owned=12, count=0, held=True)
    assert holding.rolls_at() == 605.0 and holding.remaining(6.0, owned=12) == 6
    # the floor: 3 per window even of 4 owned
    assert PruneBudget(fraction=0.5, window=600).remaining(0.0, owned=4) == 3


def test_an_incomplete_source_keeps_its_share_of_a_merged_service() -> None:
    both = DesiredService(
        name="web",
        namespace="network",
        ports=[Port("http", 80)],
        endpoints=[Endpoint("10.0.1.1", source="dc1"), Endpoint("10.0.2.1", source="dc2")],
        sources=["dc1", "dc2"],
    )
    # dc2 is unreachable: the merge holds only dc1's endpoint
    only_dc1 = attrs.evolve(both, endpoints=[Endpoint("10.0.1.1", source="dc1")], sources=["dc1"])
    observed = owned(both)
    assert plan({both.key: only_dc1}, observed, incomplete_sources={"dc2"}).changes == ()
    # dc1's own changes still go through, dc2's endpoint stays
    moved = attrs.evolve(only_dc1, endpoints=[Endpoint("10.0.1.9", source="dc1")])
    (change,) = plan({both.key: moved}, observed, incomplete_sources={"dc2"}).changes
    assert change.desired is not None
    assert [e.address for e in change.desired.endpoints] == ["10.0.1.9", "10.0.2.1"]
    assert change.desired.sources == ("dc1", "dc2")
    # once dc2 answers (complete, without the endpoint), it goes
    (change,) = plan({both.key: only_dc1}, observed).changes
    assert change.desired == only_dc1


def test_prune_guard_allows_small_deletes_and_fractions_below() -> None:
    many = [service(f"s{i}", f"10.0.1.{i}") for i in range(10)]
    # 3 objects is always fine, even if it is all of them
    assert plan({}, owned(*many[:3])).count(Action.DELETE) == 3
    # 5 of 10 is not more than half
    keep = {s.key: s for s in many[5:]}
    assert plan(keep, owned(*many)).count(Action.DELETE) == 5
    # 6 of 10 is
    keep = {s.key: s for s in many[6:]}
    assert plan(keep, owned(*many)).held == tuple(s.key for s in many[:6])
    # unless the operator raised the fraction
    assert plan({}, owned(*many), max_prune_fraction=1.0).count(Action.DELETE) == 10


def test_scope_limits_planning_but_guard_measures_everything() -> None:
    many = [service(f"s{i}", f"10.0.1.{i}") for i in range(10)]
    desired = {s.key: s for s in many}
    desired[many[0].key] = service("s0", "10.0.2.1")
    result = plan(desired, owned(*many), scope={many[0].key})
    assert actions(result) == [("update", "s0")]
    # scoped deletes of 4 of 10 owned: under half, allowed
    gone = [s.key for s in many[:4]]
    result = plan({k: v for k, v in desired.items() if k not in gone}, owned(*many), scope=gone)
    assert result.count(Action.DELETE) == 4


# --- merge ------------------------------------------------------------------


def test_merge_unions_endpoints_of_the_same_key() -> None:
    a = service("web", "10.0.0.1", source="dc1")
    b = service("web", "10.0.0.2", source="dc2")
    merged = merge([Snapshot.of("dc1", [a]), Snapshot.of("dc2", [b])])
    web = merged.services[a.key]
    assert [e.address for e in web.endpoints] == ["10.0.0.1", "10.0.0.2"]
    assert web.sources == ("dc1", "dc2")
    assert merged.warnings == ()


def test_merge_conflicting_ports_first_source_wins_and_endpoints_keep_their_port() -> None:
    a = service("web", "10.0.0.1", source="dc1", port=8080)
    b = service("web", "10.0.0.2", source="dc2", port=9090)
    forward = merge([Snapshot.of("dc1", [a]), Snapshot.of("dc2", [b])])
    web = forward.services[a.key]
    assert web.ports == (Port("http", 8080),)
    assert {(e.address, web.port_for(e)) for e in web.endpoints} == {
        ("10.0.0.1", 8080),
        ("10.0.0.2", 9090),
    }
    assert len(forward.warnings) == 1 and "different ports" in forward.warnings[0]
    # the rule is configuration order, not arrival order: reversing the list flips it
    backward = merge([Snapshot.of("dc2", [b]), Snapshot.of("dc1", [a])])
    assert backward.services[a.key].ports == (Port("http", 9090),)


def test_merge_label_clash_keeps_the_first_and_warns() -> None:
    a = service("web", "10.0.0.1", source="dc1", labels={"team": "a", "x": "1"})
    b = service("web", "10.0.0.2", source="dc2", labels={"team": "b", "y": "2"})
    merged = merge([Snapshot.of("dc1", [a]), Snapshot.of("dc2", [b])])
    assert dict(merged.services[a.key].labels) == {"team": "a", "x": "1", "y": "2"}
    assert any("'team'" in w for w in merged.warnings)


def test_merge_only_requested_keys() -> None:
    merged = merge([Snapshot.of("s", [A, B])], keys=[B.key])
    assert list(merged.services) == [B.key]


# --- properties ---------------------------------------------------------------

names = st.sampled_from([f"svc{i}" for i in range(8)])
addresses = st.sampled_from([f"10.0.0.{i}" for i in range(6)] + ["fd00::1", "nas.home.arpa"])
endpoints = st.builds(
    Endpoint, address=addresses, ready=st.booleans(), port=st.none() | st.sampled_from([81, 82])
)
services = st.builds(
    lambda n, eps, port, src: DesiredService(
        n, "network", [Port("http", port)], eps, sources=[src]
    ),
    names,
    st.lists(endpoints, max_size=4),
    st.sampled_from([80, 8080]),
    st.sampled_from(["a", "b"]),
)
service_maps = st.lists(services, max_size=8).map(lambda ss: {s.key: s for s in ss})
foreign_keys = st.sets(names.map(lambda n: ("network", n)), max_size=3)


def observed_from(owned_services, foreign) -> dict:
    result = owned(*owned_services.values())
    for key in foreign:
        result.setdefault(key, Observed(key, owned=False))
    return result


@settings(max_examples=300)
@given(desired=service_maps, current=service_maps, foreign=foreign_keys)
def test_applying_a_plan_reaches_desired_and_a_second_plan_is_empty(desired, current, foreign):
    observed = observed_from(current, foreign)
    result = plan(desired, observed, max_prune_fraction=1.0)
    after = apply_to(observed, result)
    for key, want in desired.items():
        if key in foreign and key not in current:
            assert after[key].owned is False  # left alone
        else:
            assert after[key].service == want
    for key, item in after.items():
        if item.owned:
            assert key in desired
    assert plan(desired, after, max_prune_fraction=1.0).empty


@settings(max_examples=300)
@given(
    desired=service_maps,
    current=service_maps,
    foreign=foreign_keys,
    policy=st.sampled_from(list(Policy)),
    incomplete=st.sets(st.sampled_from(["a", "b"])),
    fraction=st.floats(0, 1),
)
def test_nothing_not_owned_is_ever_written_and_policies_hold(
    desired, current, foreign, policy, incomplete, fraction
):
    observed = observed_from(current, foreign)
    result = plan(
        desired, observed, policy=policy, incomplete_sources=incomplete, max_prune_fraction=fraction
    )
    for change in result.changes:
        have = observed.get(change.key)
        if change.action is not Action.CREATE:
            assert have is not None and have.owned
        else:
            assert have is None
        if change.action is Action.DELETE:
            assert policy is Policy.SYNC
            assert not set(have.sources or ()) & incomplete
        if change.action is Action.UPDATE:
            assert policy is not Policy.CREATE_ONLY
    deletes = result.count(Action.DELETE)
    owned_count = sum(1 for o in observed.values() if o.owned)
    assert deletes <= 3 or deletes <= fraction * owned_count


@given(desired=service_maps, current=service_maps)
def test_incremental_planning_over_all_keys_equals_a_full_plan(desired, current):
    observed = owned(*current.values())
    full = plan(desired, observed, max_prune_fraction=1.0)
    scoped = plan(desired, observed, scope=set(desired) | set(observed), max_prune_fraction=1.0)
    assert full == scoped


def test_model_canonical_forms() -> None:
    one = DesiredService(
        "x",
        "ns",
        [Port("http", 80)],
        [Endpoint("10.0.0.2"), Endpoint("10.0.0.1"), Endpoint("10.0.0.1")],
        labels={"b": "2", "a": "1"},
    )
    two = DesiredService(
        "x",
        "ns",
        [Port("http", 80)],
        [Endpoint("10.0.0.1"), Endpoint("10.0.0.2")],
        labels=[("a", "1"), ("b", "2")],
    )
    assert one == two and hash(one) == hash(two)
    assert Endpoint("1.2.3.4", ready=False).serving is False
    assert attrs.evolve(one, name="y") != one
