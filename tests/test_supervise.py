"""The index of live engine bridges where supervisors find calls (switch/b2bua/supervise.py)."""

from __future__ import annotations

from media.mixer import Conference, Links
from switch.b2bua.supervise import Bridges, LiveBridge


def bridge(call_id: str, tenant: str, rows: dict[str, int]) -> LiveBridge:
    return LiveBridge(call_id, tenant, Conference(Links()), rows)


def test_a_bridge_is_found_by_each_extension_on_it_within_its_tenant() -> None:
    bridges = Bridges()
    first = bridge("c1", "acme", {"101": 0, "102": 1})
    bridges.add(first)
    bridges.add(bridge("c2", "globex", {"101": 2}))
    assert bridges.find("acme", "101") is first and bridges.find("acme", "102") is first
    assert bridges.find("globex", "101") is not first
    assert bridges.find("acme", "103") is None
    assert len(bridges) == 2


def test_a_bridge_that_ends_lets_its_supervisors_go_and_leaves_a_newer_one() -> None:
    bridges = Bridges()
    old, new = bridge("c1", "acme", {"101": 0, "102": 1}), bridge("c2", "acme", {"102": 2})
    bridges.add(old)
    bridges.add(new)  # 102 took a second call: the newer bridge is the one to find
    bridges.remove(old)
    assert old.ended.is_set() and not new.ended.is_set()
    assert bridges.find("acme", "102") is new
    assert bridges.find("acme", "101") is None
