"""How party processes start: a forkserver with torch and CrypTen preloaded (or spawn), never a fork of the caller.

The parties must see the caller's environment as it is at launch (as with
``spawn``), not the forkserver's from when it started, and none of the
caller's runtime state.
"""

from __future__ import annotations

import multiprocessing
import os

import pytest

from pricure_crypten.experiments.launch import run_parties
from pricure_crypten.parties.process import START_METHOD_ENV, party_context

#: set at runtime in the caller by a test below; a party that re-imports this module sees the default
CALLER_STATE = "fresh import"


def test_the_start_method_is_forkserver_where_available_and_can_be_forced_to_spawn(monkeypatch):
    monkeypatch.delenv(START_METHOD_ENV, raising=False)
    expected = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    assert party_context().get_start_method() == expected
    monkeypatch.setenv(START_METHOD_ENV, "spawn")
    assert party_context().get_start_method() == "spawn"
    monkeypatch.setenv(START_METHOD_ENV, "fork")  # a fork of the caller is never allowed
    with pytest.raises(ValueError, match="forkserver' or 'spawn'"):
        party_context()


def _probe(rank: int) -> dict:
    return {"env": os.environ.get("PRICURE_PROBE"), "state": CALLER_STATE, "pid": os.getpid(),
            "ppid": os.getppid()}


@pytest.mark.mpc
def test_parties_see_the_callers_environment_at_launch_and_none_of_its_runtime_state(monkeypatch):
    monkeypatch.delenv("PRICURE_PROBE", raising=False)
    first = run_parties(_probe)  # starts the forkserver (if any) without the variable
    monkeypatch.setenv("PRICURE_PROBE", "set after the forkserver started")
    monkeypatch.setattr(f"{__name__}.CALLER_STATE", "changed in the caller")
    second = run_parties(_probe)
    assert [p["env"] for p in first] == [None, None]
    assert [p["env"] for p in second] == ["set after the forkserver started"] * 2
    assert {p["state"] for p in first + second} == {"fresh import"}  # not a fork of the caller
    assert all(p["ppid"] != os.getpid() or party_context().get_start_method() == "spawn" for p in second)
