"""Test tiers (assigned here, centrally) and shared fixtures (small owners trained on scikit-learn's digits).

Tiers, run in this order by one ``pytest`` invocation (fast failures first):

* ``fast``: unit tests that start no process at all (checked: a fast test that starts a
  subprocess or a multiprocessing process fails with a message naming this file);
* ``mpc``: tests marked ``mpc`` in their module (CrypTen parties in spawned processes, the
  in-process cluster, the benchmark smoke runs, notebooks) or listed in ``SPAWNS`` below
  (a fresh interpreter, e.g. import checks);
* ``deployment``: the modules in ``DEPLOYMENT`` (every party its own ``pricure`` process,
  started by :mod:`pricure_crypten.experiments.launch`).

``pytest -m fast`` runs the unit tier alone (about 35 s); ``pytest -m "not deployment"``
leaves out the networked deployments.
"""

from __future__ import annotations

import multiprocessing.process
import os
import subprocess

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from pricure_crypten import ModelOwner

DEPLOYMENT = {"test_deployment", "test_net_attacks", "test_net_consistency", "test_net_label", "test_netns"}
# tests not marked mpc that start a process (a fresh interpreter, a CLI run, a killed writer): the mpc tier.
# Found by the check below (a fast test that starts a process fails and names this list).
SPAWNING_MODULES = {"test_exposure_benchmark", "test_utility_benchmark", "test_readme_tables", "test_teachers_benchmark",
                    "test_transfer_benchmark"}
SPAWNS = {
    "test_filter.py::test_process_killed_inside_an_answered_only_spend_keeps_the_worst_case",
    "test_imports.py::test_budget_command_and_accounting_never_load_crypten",
    "test_imports.py::test_importing_the_package_then_crypten_works_on_this_torch",
    "test_ledger.py::test_sigkill_between_reserve_and_confirm_keeps_the_reservation",
    "test_ledger.py::test_sigkill_mid_stream_never_under_counts",
    "test_ledger.py::test_two_processes_at_the_budget_edge_do_not_both_succeed",
    "test_ledger.py::test_void_stale_reservations_keeps_live_reservations",
    "test_ledger.py::test_void_stale_reservations_treats_a_zombie_and_a_reused_pid_as_stopped",
    "test_ledger.py::test_void_stale_reservations_voids_a_killed_process_reservation_audited",
    "test_net_hardening.py::test_the_query_command_names_a_missing_token_file",
    "test_net_hardening.py::test_the_supervisor_restarts_a_party_killed_by_a_signal_and_stops_only_when_asked",
}
TIERS = ("fast", "mpc", "deployment")
TIER = pytest.StashKey[str]()


def _tier(item: pytest.Item) -> str:
    module = item.path.stem
    if module in DEPLOYMENT:
        return "deployment"
    if item.get_closest_marker("mpc") or module in SPAWNING_MODULES or \
            item.nodeid.split("[")[0].removeprefix("tests/") in SPAWNS:
        return "mpc"
    return "fast"


@pytest.hookimpl(tryfirst=True)  # before -m selects on the markers added here
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = _tier(item)
        item.stash[TIER] = tier
        if not item.get_closest_marker(tier):
            item.add_marker(getattr(pytest.mark, tier))
    items.sort(key=lambda item: TIERS.index(item.stash[TIER]))  # stable: file order within a tier


_ORIGINAL = {(subprocess.Popen, "_execute_child"): subprocess.Popen._execute_child,
             (multiprocessing.process.BaseProcess, "start"): multiprocessing.process.BaseProcess.start,
             (os, "fork"): os.fork}


def _refuse(what: str):
    def refuse(*args, **kwargs):
        raise AssertionError(f"a fast-tier test started a process ({what}): list it in SPAWNS in tests/conftest.py "
                             "(or mark it mpc)")
    return refuse


def _forbid_processes(forbid: bool) -> None:
    for (owner, name), original in _ORIGINAL.items():
        setattr(owner, name, _refuse(f"{getattr(owner, '__name__', owner)}.{name}") if forbid else original)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """The fast tier's promise, checked: while fast tests (and their fixtures) run, starting a subprocess,
    a multiprocessing process or a fork fails."""
    _forbid_processes(item.stash.get(TIER, None) == "fast")


def pytest_sessionfinish(session: pytest.Session) -> None:
    _forbid_processes(False)


def _mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10))


def _cnn():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(4 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 10),
    )


def _train(model, x, y, seed, epochs=60):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(epochs):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def digits():
    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.from_numpy(np.random.default_rng(0).permutation(len(y)))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


@pytest.fixture(scope="session")
def digits_owners(digits):
    """Seven trained owners on disjoint shards: five MLPs and two CNNs (two architectures)."""
    x, y, _, _ = digits
    shards = np.array_split(np.arange(len(y)), 7)
    owners = []
    for i, idx in enumerate(shards):
        torch.manual_seed(100 + i)
        model = _mlp() if i < 5 else _cnn()
        model = _train(model, x[idx], y[idx], seed=i)
        owners.append(ModelOwner(name=f"hospital-{i}", model=model, input_shape=(1, 8, 8), num_classes=10))
    return owners
