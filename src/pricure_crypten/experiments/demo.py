"""The main job: several owners with complementary data collaborate on one private prediction task.

:func:`run_demo` trains K owners on disjoint (by default label-skewed) shards
of a dataset, then sends Q test queries through the secure protocol with its
default secure configuration (N servers, a dealer, DP noise, one reveal per
batch), and compares against each single owner and the plaintext ensemble.
Every figure it reports is measured in this run.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import reference
from ..privacy.accounting import PrivacyLedger, make_accountant
from ..parties.client import Client
from .data import load_dataset
from .demo_config import DemoConfig
from ..privacy.noise import NoNoise
from ..parties.owner import ModelOwner
from .partition import describe_partition, partition
from ..ensemble import Cost, PrivateEnsemble
from .training import accuracy, train_owners

REPORT_DELTA = 1e-5  # the total delta at which the demo reports the client's spent epsilon
REPORT_ACCOUNTANTS = ("basic", "rdp", "pld")  # the client's total is also reported under each of these


def _select_queries(dataset, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    available = len(dataset.test_y)
    if count > available:
        raise ValueError(f"--queries {count} exceeds the {available} test examples of {dataset.name}")
    order = torch.from_numpy(np.random.default_rng(seed).permutation(available)[:count])
    return dataset.test_x[order], dataset.test_y[order]


def _json_number(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def total_epsilon_by_accountant(mechanism, queries: int, *, delta: float = REPORT_DELTA) -> dict[str, float | str]:
    """The client's total epsilon after ``queries`` releases of ``mechanism``, at ``delta``, per accountant.

    Every answer depends on every training record, so the guarantee is the
    composition of ALL the client's queries. ``inf`` where an accountant
    certifies nothing at ``delta`` (basic composition of Gaussian releases
    adds up their deltas) or the mechanism adds no noise.
    """
    totals: dict[str, float | str] = {}
    for name in REPORT_ACCOUNTANTS:
        accountant = make_accountant(name)
        if math.isinf(mechanism.epsilon) or not accountant.supports(mechanism):
            totals[name] = _json_number(math.inf)
            continue
        totals[name] = _json_number(float(accountant.compose([(mechanism, queries)]).get_epsilon(delta)))
    return totals


def run_demo(config: DemoConfig) -> dict[str, Any]:
    """Train the owners, run the private predictions, return every figure as a dict."""
    root = Path(config.data_root) if config.data_root else None
    dataset = load_dataset(config.dataset, root=root, download=config.download, seed=config.seed)
    if config.owners > len(dataset.train_y):
        raise ValueError(
            f"--owners {config.owners} exceeds the {len(dataset.train_y)} training examples of {dataset.name}"
        )
    queries, truth = _select_queries(dataset, config.queries, config.seed)
    parts = partition(dataset.train_y.numpy(), num_owners=config.owners, scheme=config.partition,
                      alpha=config.alpha, seed=config.seed, min_size=min(10, len(dataset.train_y) // config.owners))
    shards = describe_partition(dataset.train_y.numpy(), parts, dataset.num_classes)
    models = [r.model for r in train_owners(dataset, parts, seed=config.seed, quiet=config.quiet)]

    single = [accuracy(m, queries, truth) for m in models]
    method = config.aggregation.method
    counts = reference.histogram(reference.ensemble_logits(models, queries), aggregation=method,
                                 logit_bound=config.aggregation.logit_bound)
    plain_labels = reference.release(counts, mechanism=NoNoise())
    top2 = np.sort(counts, axis=-1)[:, -2:]
    ties = int(np.sum(np.isclose(top2[:, 0], top2[:, 1])))

    owners = [
        ModelOwner(name=f"owner-{i}", model=m, input_shape=dataset.input_shape, num_classes=dataset.num_classes)
        for i, m in enumerate(models)
    ]
    client = Client("demo-client")
    mechanism = config.aggregation.noise
    if config.deployment == "processes":
        private_labels, costs, budget = _predict_deployed(config, owners, queries)
    else:
        private_labels, costs = [], []
        with tempfile.TemporaryDirectory(prefix="pricure-demo-") as tmp, PrivacyLedger(
            Path(tmp) / "ledger.sqlite3", total_epsilon=float("inf"), total_delta=REPORT_DELTA
        ) as ledger, PrivateEnsemble(
            owners, aggregation=config.aggregation, cluster=config.cluster, ledger=ledger,
        ) as ensemble:
            for start in range(0, config.queries, config.batch_size):
                prediction = ensemble.predict(queries[start:start + config.batch_size], client=client)
                private_labels.append(prediction.labels)
                costs.append(prediction.cost)
            budget = ledger.status(client.name)
    private = np.concatenate(private_labels)
    truth_np = truth.numpy()
    return {
        "deployment": config.deployment,
        "dataset": dataset.name,
        "owners": config.owners,
        "servers": config.cluster.num_servers,
        "colluding": config.cluster.colluding,
        "epsilon": _json_number(mechanism.epsilon),
        "delta": mechanism.delta,
        "mechanism": mechanism.name,
        "noise_scale": mechanism.scale,
        "aggregation": method,
        "partition": config.partition,
        "queries": config.queries,
        "batch_size": config.batch_size,
        "batches": len(costs),
        "single_owner_accuracy_mean": float(np.mean(single)),
        "single_owner_accuracy_best": float(np.max(single)),
        "plaintext_ensemble_accuracy": float(np.mean(plain_labels == truth_np)),
        "private_accuracy": float(np.mean(private == truth_np)),
        "private_equals_plaintext": float(np.mean(private == plain_labels)),
        "plaintext_ties": ties,
        "seconds_per_query": sum(c.seconds for c in costs) / config.queries,
        "rounds_per_batch": max(c.rounds for c in costs),
        "bytes_per_query": sum(c.bytes_sent for c in costs) / config.queries,
        "reveals_per_batch": max(c.reveals for c in costs),
        "server_decodes": sum(c.server_decodes for c in costs),
        "client_spent_epsilon": _json_number(budget.spent_epsilon),
        "client_spent_delta": budget.spent_delta,
        "accountant": f"{budget.accountant} ({budget.bound})",
        "client_answered_queries": budget.answered_queries,
        "client_total_epsilon_by_accountant": total_epsilon_by_accountant(mechanism, budget.answered_queries),
        "owner_shards": shards,
        "config": _config_summary(config),
    }


def _predict_deployed(config: DemoConfig, owners: list[ModelOwner], queries: torch.Tensor) -> tuple:
    """The same predictions through the front doors of separately started ``pricure serve`` processes."""
    import time

    from .._validation import DEFAULT_LOGIT_BOUND
    from ..privacy.noise import GaussianNoise, LaplaceNoise, NoNoise
    from .launch import Deployment

    noise = config.aggregation.noise
    flags = ["--epsilon", repr(float(noise.epsilon)), "--aggregation", config.aggregation.method,
             "--colluding", str(config.cluster.colluding), "--budget-delta", repr(REPORT_DELTA)]
    if isinstance(noise, GaussianNoise):
        flags += ["--mechanism", "gaussian", "--delta", repr(float(noise.delta))]
    if config.aggregation.logit_bound != DEFAULT_LOGIT_BOUND or not isinstance(
            noise, (LaplaceNoise, GaussianNoise, NoNoise)):
        raise ValueError("--deployment processes supports the CLI's mechanisms (laplace, gaussian, inf) only")
    labels, costs = [], []
    with Deployment(servers=config.cluster.num_servers, owners=[o.name for o in owners],
                    clients=["demo-client"], serve_flags=flags) as deployment:
        deployment.upload_all(owners)
        with deployment.remote("demo-client") as remote:
            for start in range(0, config.queries, config.batch_size):
                began = time.perf_counter()
                labels.append(remote.predict(queries[start:start + config.batch_size]).labels)
                costs.append(time.perf_counter() - began)
        health = [deployment.health(r) for r in range(config.cluster.num_servers)]
        budget = deployment.status(0, "demo-client", total_delta=REPORT_DELTA)
    batches = max(1, health[0]["batches"])
    cost = [Cost(queries=len(l), seconds=s, mpc_seconds=health[0]["totals"]["mpc_seconds"] / batches,
                 rounds=health[0]["totals"]["rounds"] // batches,
                 bytes_sent=sum(h["totals"]["bytes"] for h in health) * len(l) / config.queries,
                 reveals=1, server_decodes=sum(h["totals"]["decodes"] for h in health))
            for l, s in zip(labels, costs)]
    return labels, cost, budget


def _config_summary(config: DemoConfig) -> dict[str, Any]:
    plain = {name: getattr(config, name) for name in DemoConfig.__dataclass_fields__
             if name not in ("aggregation", "cluster")}
    plain.update(aggregation=config.aggregation.method, noise=repr(config.aggregation.noise),
                 logit_bound=config.aggregation.logit_bound, cluster=repr(config.cluster))
    return {k: _json_number(v) if isinstance(v, float) else v for k, v in plain.items()}


def format_table(result: dict[str, Any]) -> str:
    """The demo's human-readable report."""
    mb = result["bytes_per_query"] / 1e6
    rows = [
        ("single owner accuracy (mean)", f"{result['single_owner_accuracy_mean']:.3f}"),
        ("single owner accuracy (best)", f"{result['single_owner_accuracy_best']:.3f}"),
        (f"plaintext ensemble accuracy ({result['aggregation']}, no noise)",
         f"{result['plaintext_ensemble_accuracy']:.3f}"),
        (f"private accuracy (MPC + DP noise calibrated to epsilon {result['epsilon']} per query)",
         f"{result['private_accuracy']:.3f}"),
        (f"client's total epsilon after {result['client_answered_queries']} queries "
         f"(delta {result['client_spent_delta']:g}, {result['accountant']} accountant)", _fmt_epsilon(result["client_spent_epsilon"])),
        ("seconds per query", f"{result['seconds_per_query']:.4f}"),
        (f"MPC rounds per batch ({result['batch_size']} queries)", f"{result['rounds_per_batch']}"),
        ("megabytes sent per query (all servers)", f"{mb:.2f}"),
        ("reveals per batch (to the client only)", f"{result['reveals_per_batch']}"),
        ("plaintext decodes on servers", f"{result['server_decodes']}"),
    ]
    width = max(len(name) for name, _ in rows)
    header = (
        f"pricure demo: {result['dataset']}, {result['owners']} owners ({result['partition']} shards), "
        f"{result['servers']} servers + dealer, {result['mechanism']} noise (scale {result['noise_scale']:.3g}), "
        f"{result['queries']} queries"
    )
    lines = [header, "-" * len(header)] + [f"{name:<{width}}  {value}" for name, value in rows]
    lines += ["", _privacy_note(result)]
    return "\n".join(lines)


def _fmt_epsilon(value: float | str) -> str:
    return value if isinstance(value, str) else f"{value:.4g}"


def _privacy_note(result: dict[str, Any]) -> str:
    if result["epsilon"] == "inf":
        return ("epsilon = inf: no noise, so the labels carry no differential-privacy guarantee for the "
                "owners' training data.")
    by_accountant = ", ".join(f"{name} {_fmt_epsilon(value)}"
                              for name, value in result["client_total_epsilon_by_accountant"].items())
    return (
        f"The guarantee: after its {result['client_answered_queries']} queries this client has spent a TOTAL "
        f"epsilon of {_fmt_epsilon(result['client_spent_epsilon'])} at delta = {result['client_spent_delta']:g} "
        f"({result['accountant']} accountant; the same queries under other accountants, at delta "
        f"{REPORT_DELTA:g}: {by_accountant}).\n"
        f"Every answer depends on every training record of every owner, so this total over ALL the client's "
        f"queries, not the per-query epsilon ({result['epsilon']}, the unit the noise is calibrated in), is "
        f"what bounds what the client can learn about any one record. A per-client budget (PrivacyLedger, "
        f"`pricure budget`) refuses queries once the total is spent."
    )
