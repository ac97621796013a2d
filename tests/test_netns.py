"""A cut link between separate network namespaces: a clear error in bounded time, no charge, recovery.

2 servers and the dealer, each started by its real command in its own network
namespace (``ip netns exec NS python -m pricure_crypten serve|dealer``),
joined by veth pairs through a bridge in a further namespace, on a subnet
that exists only inside them; the client side is a thread pool inside its own
namespace (the launcher's :class:`~pricure_crypten.experiments.launch.Namespaces` topology).
3 owners upload once. Mid-request, server
1's veth is set DOWN: the client gets a clear error well before its own
timeout, no server's ledger charges anything, and once the link is UP again
the servers' supervisors have rejoined the MPC with the shares reloaded from
disk: the system answers without a new upload. Every namespace, veth and
process created here is removed in the fixture's teardown.

Needs root and ``ip netns``; skipped otherwise.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from pricure_crypten.experiments.launch import Deployment, Namespaces, namespace_names, namespaces_unavailable
from tests.helpers import mlp_owners

pytestmark = [pytest.mark.mpc, pytest.mark.skipif(namespaces_unavailable() is not None,
                                                  reason=f"netns: {namespaces_unavailable()}")]

# The servers' --wait (rendezvous bound) must be generous: after the cut both supervisors restart their parties,
# and on a loaded machine a restarted peer can take well over 25 s to reach the rendezvous again. Their collectives
# time out after --timeout (COLLECTIVE_TIMEOUT; start_party bounds the rendezvous by --wait apart), which bounds how
# long a cut link holds a reservation; it only has to cover the lockstep servers' skew within one exchange.
# The dealer keeps the launcher's default wait (120 s).
SERVER_WAIT = 60.0
CLIENT_TIMEOUT = 120.0  # the RemoteEnsemble's own bound on one prediction (well above COLLECTIVE_TIMEOUT)
COLLECTIVE_TIMEOUT = 20.0


@pytest.fixture(scope="module")
def owners():
    # 64 inputs -> 24 -> 10 classes: a 256-row batch keeps the MPC busy for a while
    return mlp_owners(3, features=64, classes=10, hidden=(24,), seed=1000)


@pytest.fixture(scope="module")
def netns(owners):
    before = namespace_names()
    try:
        with Deployment(servers=2, owners=[o.name for o in owners], clients=["alice"], topology=Namespaces(),
                        server_wait=SERVER_WAIT,
                        serve_flags=["--epsilon", "inf", "--timeout", f"{COLLECTIVE_TIMEOUT:g}",
                                     "--incomplete-after", "5"]) as d:
            d.upload_all(owners)
            yield d
    finally:
        assert namespace_names() == before, "a network namespace was left behind"


def _settled(d: Deployment, client: str, answered: list[int], bound: float) -> dict:
    deadline = time.monotonic() + bound
    while True:
        got = {r: (d.status(r, client).answered_queries, d.status(r, client).reserved_queries) for r in range(d.n)}
        if all(got[r] == (answered[r], 0) for r in range(d.n)):
            return got
        assert time.monotonic() < deadline, f"charged or still reserved after {bound:g} s: {got}\n{d.logs()}"
        time.sleep(0.25)


def test_a_cut_link_fails_the_request_cleanly_and_the_system_recovers_without_new_uploads(netns, owners):
    d = netns
    x = np.random.default_rng(5).normal(size=(256, owners[0].input_shape[0]))

    def predict(rows: np.ndarray) -> np.ndarray:
        with d.remote("alice", timeout=CLIENT_TIMEOUT) as alice:
            return alice.predict(rows).labels

    reference = d.call(predict, x[:8])  # the namespaced deployment answers
    answered = [d.status(r, "alice").answered_queries for r in range(d.n)]
    assert answered == [8, 8]

    reserved: list[int] = []

    def cut_mid_request() -> tuple[str, float]:
        from pricure_crypten.parties.net.remote import RemoteError

        with d.remote("alice", timeout=CLIENT_TIMEOUT) as alice:
            rid = alice.submit(x)  # share 0 at server 0, share 1 at server 1
            # every server voted ok and reserved the spend: the MPC starts (a generous bound: a loaded machine)
            deadline = time.monotonic() + 120.0
            while d.status(0, "alice").reserved_queries == 0 and time.monotonic() < deadline:
                time.sleep(0.005)
            reserved[:] = [d.status(r, "alice").reserved_queries for r in range(d.n)]
            d.network.link("s1", up=False)  # cut server 1's link mid-MPC
            started = time.monotonic()
            try:
                alice.collect(rid)
            except RemoteError as failure:
                return str(failure), time.monotonic() - started
            return "answered", time.monotonic() - started

    try:
        message, detected = d.call(cut_mid_request)
        assert message != "answered", "the request finished before the link was cut"
        assert reserved[0] == len(x), f"the link was cut before the MPC started: reserved {reserved}"
        print(f"\ncut server 1's veth mid-request: client error after {detected:.1f} s: {message}")
        assert detected < 0.75 * CLIENT_TIMEOUT, f"not a clear error but the client's own timeout: {message}"
        assert "no answer from every server within" not in message
        assert ("server 1" in message and "unreachable" in message) or "MPC" in message, message
        # the client cannot know whether the cut stopped the MPC before the charge: it says so (its cancel came
        # after server 0 had reserved), or relays a server's 'nothing was revealed or charged'
        assert "nothing was revealed or charged" in message or (
            "may have been computed and charged; its result will not be delivered" in message), message
        cut = time.monotonic()
        # both servers' collectives time out (COLLECTIVE_TIMEOUT), fail the request and roll the reservation back
        got = _settled(d, "alice", answered, bound=COLLECTIVE_TIMEOUT + 30.0)
        print(f"ledgers after the cut (answered, reserved) per server: {got}; "
              f"settled {time.monotonic() - cut:.1f} s after the client's error")
    finally:
        d.network.link("s1", up=True)
    restored = time.monotonic()
    states = d.wait_ready(owners=3)  # the supervisors restarted their parties; shares from disk
    assert all(len(s["owners_loaded"]) == 3 for s in states)
    for rank in range(d.n):  # each server's supervisor started a fresh party process
        log = d.log(f"server{rank}")
        assert "restarting the party" in log, log
        print(f"server {rank}: " + next(line for line in log.splitlines() if "the MPC failed" in line))
    labels = d.call(predict, x[:8])
    print(f"link up again: answering {time.monotonic() - restored:.1f} s later, without a new upload")
    assert labels.tolist() == reference.tolist()
    assert [d.status(r, "alice").answered_queries for r in range(d.n)] == [16, 16]
    for name, process in d.processes.items():  # the same processes: nobody restarted a server by hand
        assert process.poll() is None, f"{name} exited:\n{d.log(name)}"
