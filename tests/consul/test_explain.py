"""In-place change detection as pure functions: which services an instance
scan (or a read of every tagged check) says to read again."""

from __future__ import annotations

from collections.abc import Mapping

from consul_sync_consul import parse
from consul_sync_consul.explain import ReadMemory, membership_changes, moved_names
from consul_sync_consul.watch import CatalogWatch

WEB1, WEB2 = ("node-a", "web-1"), ("node-a", "web-2")

#: name -> {(node, ID): ModifyIndex}: a scan as these tests write it.
Instances = Mapping[str, Mapping[tuple[str, str], int]]


def scan_of(instances: Instances) -> parse.Scan:
    scan = parse.Scan()
    for name, each in instances.items():
        for (node, sid), index in each.items():
            scan.add(name, node, sid, index)
    return scan


def keys(name: str, members: frozenset[tuple[str, str]]) -> frozenset[str]:
    return frozenset(parse.instance_key(name, node, sid) for node, sid in members)


def moved(
    name: str,
    scan: Instances,
    previous: Instances | None,
    read_index: Mapping[str, int],
    read_members: Mapping[str, frozenset[tuple[str, str]]],
) -> bool:
    """Whether :func:`moved_names` says to read ``name`` again."""
    names = moved_names(
        {name},
        scan_of(scan),
        None if previous is None else scan_of(previous),
        read_index,
        {n: keys(n, m) for n, m in read_members.items()},
    )
    return name in names


def test_an_instance_modified_after_the_last_read_has_moved() -> None:
    scan = {"web": {WEB1: 120}}
    assert moved("web", scan, None, {"web": 100}, {"web": frozenset({WEB1})})
    # the same ModifyIndex as the read, or older: nothing new
    assert not moved("web", scan, None, {"web": 120}, {"web": frozenset({WEB1})})
    assert not moved("web", scan, None, {"web": 130}, {"web": frozenset({WEB1})})


def test_a_new_instance_is_found_by_its_index() -> None:
    scan = {"web": {WEB1: 90, WEB2: 140}}
    assert moved("web", scan, None, {"web": 100}, {"web": frozenset({WEB1})})


def test_an_instance_the_last_read_gave_that_is_gone_has_moved() -> None:
    # deregistered, or lost the tag: absent from the scan of tagged instances
    scan = {"web": {WEB1: 90}}
    assert moved("web", scan, None, {"web": 100}, {"web": frozenset({WEB1, WEB2})})
    # every instance gone: the service is absent from the scan altogether
    assert moved("web", {}, None, {"web": 100}, {"web": frozenset({WEB1})})


def test_a_difference_from_the_previous_scan_counts_without_a_read_index() -> None:
    # never read (no index): only a change between two scans says it moved
    scan = {"plain": {WEB1: 90}}
    assert not moved("plain", scan, None, {}, {})
    assert not moved("plain", scan, {"plain": {WEB1: 90}}, {}, {})
    assert moved("plain", scan, {"plain": {WEB1: 80}}, {}, {})
    assert moved("plain", scan, {}, {}, {})


def test_moved_names_reads_only_the_names_that_moved() -> None:
    scan = scan_of({"web": {WEB1: 120}, "db": {("node-a", "db-1"): 50}})
    read_index = {"web": 100, "db": 100}
    members = {
        "web": keys("web", frozenset({WEB1})),
        "db": keys("db", frozenset({("node-a", "db-1")})),
    }
    assert moved_names({"web", "db"}, scan, None, read_index, members) == {"web"}
    assert moved_names(set(), scan, None, read_index, members) == set()
    # against a previous scan: only the name whose instances differ
    before = scan_of({"web": {WEB1: 120}, "db": {("node-a", "db-1"): 40}})
    assert moved_names({"web", "db"}, scan, before, {}, {}) == {"db"}
    gone = scan_of({"web": {WEB1: 120}})
    assert moved_names({"web", "db"}, gone, scan, {}, {}) == {"db"}


def test_membership_changes_compare_instances_with_checks() -> None:
    before = {"web": frozenset({WEB1}), "db": frozenset({("node-a", "db-1")})}
    now = {"web": frozenset({WEB1, WEB2}), "db": frozenset({("node-a", "db-1")})}
    assert membership_changes({"web", "db"}, now, before) == {"web"}
    # an untagged name is never read; a tagged one whose checks all went is
    assert membership_changes({"db"}, now, before) == set()
    assert membership_changes({"web", "db"}, {"web": now["web"]}, before) == {"web", "db"}


def test_read_memory_keeps_what_each_read_returned() -> None:
    checked = parse.Entry(
        "web", "web-1", "node-a", "10.0.0.11", 80, service_checks=(("c", "passing"),)
    )
    unchecked = parse.Entry("web", "web-2", "node-a", "10.0.0.12", 80)
    memory = ReadMemory()
    memory.remember("web", 100, (checked, unchecked))
    assert memory.index == {"web": 100} and list(memory.indexes) == [100]
    assert memory.members == {"web": keys("web", frozenset({WEB1, WEB2}))}
    assert memory.checked == {"web": frozenset({WEB1})}
    memory.remember("web", None, ())  # no index: the last one stays
    assert memory.index == {"web": 100} and memory.members == {"web": frozenset()}
    memory.forget("web")
    assert not memory.index and not memory.members and not memory.checked


def test_catalog_watch_takes_an_answer_when_something_moved() -> None:
    watch = CatalogWatch()
    first = watch.answer(0, 10, token=0, failed=False, known=False, empty=False)
    assert first is not None and first.full and not first.recovery
    # the same index, nothing failed, the same token: nothing to take
    assert watch.answer(10, 10, token=0, failed=False, known=True, empty=False) is None
    moved_on = watch.answer(10, 11, token=0, failed=False, known=True, empty=False)
    assert moved_on is not None and not moved_on.full
    # an index that went backwards is a recovery: every tagged service is read
    back = watch.answer(11, 5, token=0, failed=False, known=True, empty=False)
    assert back is not None and back.full and back.recovery
    # a new token: everything again
    token = watch.answer(5, 5, token=1, failed=False, known=True, empty=False)
    assert token is not None and token.full and not token.recovery
