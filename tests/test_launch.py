"""The launcher's configuration (fast tier: nothing is started): topologies, addresses, commands, refusals.

The deployments themselves are exercised by the deployment tier (test_deployment, test_net_attacks,
test_net_consistency, test_netns) and by ``pricure demo --deployment processes``.
"""

from __future__ import annotations

import ipaddress

import pytest

from pricure_crypten.experiments.launch import Deployment, Loopback, Namespaces


@pytest.mark.parametrize("make, error, match", [
    (lambda: Loopback(first=1), ValueError, r"Loopback.first must be an integer in \[2, 250\]"),
    (lambda: Loopback(first=251), ValueError, "Loopback.first"),
    (lambda: Loopback(first=True), ValueError, "Loopback.first"),
    (lambda: Loopback(first=250).network(6), ValueError, "no room for 6 servers"),
    (lambda: Namespaces(subnet="8.8.8"), ValueError, "private"),
    (lambda: Namespaces(subnet="127.0.0"), ValueError, "private, non-loopback"),
    (lambda: Namespaces(subnet="10.1"), ValueError, "three octets"),
    (lambda: Deployment(servers=1, clients=["c"]), ValueError, "servers must be an integer >= 2"),
    (lambda: Deployment(servers=2, clients=["c"], topology="loopback"), TypeError,
     "topology must be Loopback or Namespaces"),
    (lambda: Deployment(servers=2, clients=["c"], wait=0), ValueError, "wait must be a positive finite"),
    (lambda: Deployment(servers=2, clients=["c"], server_wait=float("inf")), ValueError, "server_wait"),
    (lambda: Deployment(servers=2, clients=["c"], ready_bound=-1), ValueError, "ready_bound"),
    (lambda: Deployment(servers=3, clients=["c"], server_flags=[[], []]), ValueError, "one list per server"),
    (lambda: Deployment(servers=2), ValueError, "at least one owner or client"),
    (lambda: Deployment(servers=2, owners=["x"], clients=["x"]), ValueError, "distinct"),
])
def test_bad_settings_are_refused_before_anything_is_created(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_topologies_are_frozen_configs():
    with pytest.raises(AttributeError):
        Loopback().first = 3  # type: ignore[misc]
    assert Loopback(first=4) == Loopback(first=4) and Namespaces() == Namespaces(subnet="10.231.0")


def test_loopback_addresses_credentials_and_commands(tmp_path):
    d = Deployment(servers=3, owners=["o1"], clients=["c1", "c2"], topology=Loopback(first=20),
                   serve_flags=["--epsilon", "inf"], server_flags=[[], [], ["--budget-epsilon", "5"]],
                   wait=90, server_wait=25, root=tmp_path)
    try:
        assert d.hosts == ["127.0.0.20", "127.0.0.21", "127.0.0.22"]
        assert [u.rsplit(":", 1)[0] for u in d.urls] == d.hosts
        assert all(ipaddress.ip_address(h).is_loopback for h in d.hosts)
        assert d.rendezvous.startswith("tcp://127.0.0.20:")
        # one token per identity, a CA and one certificate per server, one data dir per server
        assert sorted(d.tokens) == ["c1", "c2", "o1"] and all(t.read_text().strip() for t in d.tokens.values())
        assert d.ca.exists() and all((tmp_path / f"s{r}" / "server.pem").exists() for r in range(3))
        args = d.serve_args(2)
        assert args[:2] == ["serve", "--rank"] and args[args.index("--servers") + 1] == "3"
        assert args[args.index("--listen") + 1] == d.urls[2]
        assert args[args.index("--wait") + 1] == "25"  # server_wait, before the caller's flags
        assert args[-4:] == ["--epsilon", "inf", "--budget-epsilon", "5"]  # common flags, then this rank's
        assert "--budget-epsilon" not in d.serve_args(0)
        dealer = d.dealer_args()
        assert dealer[:3] == ["dealer", "--servers", "3"] and dealer[dealer.index("--wait") + 1] == "90"
        with pytest.raises(ValueError, match="no party 'server3'"):
            d.start("server3")
        with pytest.raises(ValueError, match="no party 'client'"):
            d.start("client")
        assert d.processes == {}
    finally:
        d.close()
        d.close()  # idempotent
    assert tmp_path.exists()  # a caller's root is left in place


def test_a_temporary_root_is_removed_on_close():
    d = Deployment(servers=2, clients=["c"])
    root = d.root
    assert root.exists()
    d.close()
    assert not root.exists()


def test_generous_default_bounds():
    # machine-speed-independent defaults: a loaded 2-core machine must not time a party out at the rendezvous
    from pricure_crypten.experiments.launch import READY_BOUND, WAIT

    d = Deployment(servers=2, owners=["o"])
    try:
        assert d.wait == d.server_wait == WAIT >= 120 and d.ready_bound == READY_BOUND >= 300
    finally:
        d.close()
