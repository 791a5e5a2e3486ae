"""Who sees what: a key's project, a shared project, an admin key, no keys."""

from __future__ import annotations

from service.limits import ApiKey
from service.serving import Caller


def test_a_key_sees_its_projects_objects_only() -> None:
    alice = Caller.with_key(ApiKey("alice", project_name="red"))
    alan = Caller.with_key(ApiKey("alan", project_name="red"))
    bob = Caller.with_key(ApiKey("bob"))
    assert (alice.identity, alice.project, alice.scope) == ("key:alice", "red", "red")
    assert alice.sees("red") and alan.sees("red")
    assert not bob.sees("red") and bob.sees("bob")
    assert not alice.sees(None)  # made before keys were configured: the operator's


def test_admin_keys_and_keyless_callers_see_every_project() -> None:
    ops = Caller.with_key(ApiKey("ops", admin=True))
    anyone = Caller.from_address("127.0.0.1")
    assert ops.project == "ops" and ops.scope is None
    assert anyone.project is None and anyone.scope is None and anyone.identity == "addr:127.0.0.1"
    for caller in (ops, anyone):
        assert caller.sees("red") and caller.sees(None)
