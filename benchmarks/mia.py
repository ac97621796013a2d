"""Membership-inference exposure (the ``mia`` suite): target x attack x epsilon -> AUC, TPR at low FPR, audit.

Per dataset (digits and breast-cancer embedded; PneumoniaMNIST from
``--data-root``, skipped when missing): the training split is cut into K
owners' IID shards, a held-out pool (non-members) and the attacker's pool
(:func:`pricure_crypten.experiments.attacks.make_split`). Owners are trained
deliberately overfit (no early stopping; the full run adds the usual
recipe). The attacker trains K shadow owners on its pool, each on a shard OF
THE TARGET OWNER'S SIZE (:func:`~pricure_crypten.experiments.attacks.splits.shadow_shards`),
with the same recipe, and calibrates each attack's threshold on them.

Targets: owner 0 alone (a label API); the plaintext vote ensemble; the
private ensemble with noise calibrated for each per-query epsilon (Laplace
and Gaussian, vote and softmax), simulated in plaintext by
:mod:`pricure_crypten.experiments.reference`; Confident-GNMax. Attacks, ALL
reported (no best-of on the evaluation records): gap (1 query/record),
augmentation by Gaussian noise (n = 10 and 30; and by shifts, for images),
decision boundary (ART HopSkipJump; thousands of queries per record, so on
its own subset of records: the ``boundary-subset`` rows, with their own
record counts), repeated queries (r rounds, with and without a client budget
at the ledger). Members = owner 0's records; non-members = the same number of
held-out records with the same labels.

Privacy is stated as the CLIENT's TOTAL epsilon over ALL its queries to the
target (``client_queries`` = queries per record x records asked; one
training record can change owner 0's vote on ANY query, so every query costs
every record), at delta 1e-5, with the accountant named
(``total_accountant``: PLD via "auto", or RDP above 20,000 queries).

Columns: the metrics with bootstrap 95% intervals (TPR at 1% / 0.1% FPR are
empty, NaN, when there are fewer than 100 / 1000 non-members: not
measurable); ``client_queries``, ``total_epsilon``/``total_delta``/
``total_accountant``; the empirical audit
(:func:`~pricure_crypten.experiments.attacks.empirical_epsilon`, 95%,
threshold chosen on half of the records and tested on the other half):
``empirical_epsilon`` (the lower bound), ``max_refutable_epsilon`` (the
largest epsilon ANY attack could refute on that audit half: a "not refuted"
above it is vacuous), ``refuted`` (empirical > total: the claimed guarantee
is false); the target's test accuracy, and ``roc`` (the curve, downsampled,
as "fpr:tpr" pairs) from which the PNGs are drawn. ``mpc_fidelity`` rows
compare the MPC path with the simulation on the same queries (chi-square on
the label counts) and give the gap attack through MPC.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from scipy import stats
from tqdm.auto import tqdm

from pricure_crypten import ConfidentGNMax, NoNoise, calibrate
from pricure_crypten.experiments.attacks import (
    AugmentationAttack, BoundaryAttack, BudgetedOracle, EnsembleOracle, GapAttack, LabelOnlyAttack, LabelOracle,
    Recipe, RepeatedQueryAttack, SingleOwnerOracle, client_total_epsilon, empirical_epsilon, evaluate, make_split,
    roc)
from pricure_crypten.experiments.attacks.splits import shadow_shards
from pricure_crypten.experiments.data import DatasetNotFoundError, load_dataset
from pricure_crypten.experiments.models import default_architecture

DELTA = 1e-5
AUDIT_CONFIDENCE = 0.95
PLD_MAX_QUERIES = 20_000  # above: RDP (PLD self-composition of 10^5 Laplace releases takes minutes)


@dataclass(frozen=True)
class MiaGrid:
    """The points of the mia suite."""

    datasets: tuple[str, ...]
    owners: int
    recipes: tuple[str, ...]
    aggregations: tuple[str, ...]
    mechanisms: tuple[str, ...]
    epsilons: tuple[float, ...]
    repeats: tuple[int, ...]
    client_budget: tuple[float, float]  # the client's TOTAL (epsilon, delta) at the ledger, basic composition
    boundary_records: int  # members (= non-members) attacked by HopSkipJump (its own subset)
    boundary: dict[str, int]
    max_members: int
    resamples: int
    epochs: int
    mpc_queries: int  # queries for the MPC-vs-simulation check (0: skip)


FULL = MiaGrid(
    datasets=("pneumoniamnist", "breast-cancer", "digits"), owners=10, recipes=("overfit", "usual"),
    aggregations=("vote", "softmax"), mechanisms=("laplace", "gaussian"),
    epsilons=(0.25, 0.5, 1.0, 2.0, 4.0, 8.0), repeats=(1, 10, 100), client_budget=(5000.0, 0.05),
    boundary_records=50, boundary={"max_iter": 5, "max_eval": 200, "init_eval": 20, "init_size": 50},
    max_members=500, resamples=500, epochs=200, mpc_queries=1000,
)
QUICK = MiaGrid(
    datasets=("digits",), owners=5, recipes=("overfit",), aggregations=("vote",), mechanisms=("laplace",),
    epsilons=(1.0,), repeats=(1, 10), client_budget=(500.0, 0.05), boundary_records=20,
    boundary={"max_iter": 3, "max_eval": 50, "init_eval": 10, "init_size": 20},
    max_members=200, resamples=200, epochs=100, mpc_queries=0,
)


@dataclass
class Prepared:
    """One dataset and recipe: owners, shadows and the evaluation records."""

    dataset: Any
    recipe: Recipe
    models: list
    shadows: list
    x: np.ndarray
    y: np.ndarray
    is_member: np.ndarray
    shadow_in: tuple[np.ndarray, np.ndarray]
    shadow_out: tuple[np.ndarray, np.ndarray]


def _arch(dataset) -> dict[str, Any]:
    if len(dataset.input_shape) == 1:  # tabular: wider than the default, to memorise
        return {"name": "mlp", "in_features": dataset.input_shape[0], "num_classes": dataset.num_classes,
                "hidden": [128]}
    return default_architecture(dataset)


def prepare(name: str, recipe_kind: str, grid: MiaGrid, *, root: Path, seed: int) -> Prepared:
    dataset = load_dataset(name, root=root, seed=seed)
    labels = dataset.train_y.numpy()
    # 35% for the attacker: enough for K shadow owners of the target's shard size (the others may overlap)
    split = make_split(labels, num_owners=grid.owners, scheme="iid", held_out_fraction=0.2, attacker_fraction=0.35,
                       max_members=grid.max_members, seed=seed)
    recipe = Recipe(arch=_arch(dataset), kind=recipe_kind, epochs=grid.epochs, lr=3e-3)
    models = recipe.train_all(dataset.train_x, dataset.train_y, split.parts, seed=seed)
    pool = split.attacker  # the attacker's own data: shadow owner 0's shard are its known members
    shards = shadow_shards(labels[pool], shard_size=len(split.parts[split.target_owner]), num_owners=grid.owners,
                           seed=seed)
    shadows = recipe.train_all(dataset.train_x, dataset.train_y, [pool[p] for p in shards.parts], seed=seed + 1000)
    rng = np.random.default_rng(seed)
    members = rng.permutation(pool[shards.parts[0]])[: grid.max_members]
    outs = rng.permutation(pool[shards.non_members])[: len(members)]
    members = members[: len(outs)]
    x, y = dataset.train_x.numpy(), labels
    return Prepared(dataset, recipe, models, shadows, x[split.records], y[split.records], split.is_member,
                    (x[members], y[members]), (x[outs], y[outs]))


@dataclass(frozen=True)
class Target:
    name: str
    aggregation: str
    mechanism_name: str
    epsilon: float
    mechanism: Any
    single: bool = False

    def oracle(self, models: Sequence, dataset, seed: int) -> LabelOracle:
        if self.single:
            return SingleOwnerOracle(model=models[0], num_classes=dataset.num_classes,
                                     input_shape=dataset.input_shape)
        return EnsembleOracle(models=models, num_classes=dataset.num_classes, input_shape=dataset.input_shape,
                              aggregation=self.aggregation, mechanism=self.mechanism, seed=seed)


def targets(grid: MiaGrid) -> list[Target]:
    out = [Target("single_owner", "none", "none", math.inf, NoNoise(), single=True),
           Target("plaintext_ensemble", "vote", "none", math.inf, NoNoise())]
    for agg in grid.aggregations:
        for mech in grid.mechanisms:
            for eps in grid.epsilons:
                out.append(Target("private_ensemble", agg, mech, eps,
                                  calibrate(epsilon=eps, mechanism=mech, aggregation=agg)))
    gnmax = gnmax_for(grid.owners)
    out.append(Target("confident_gnmax", "vote", "confident-gnmax", gnmax.epsilon, gnmax))
    return out


def gnmax_for(owners: int) -> ConfidentGNMax:
    """Confident-GNMax for K owners: answer when the noisy top vote count reaches 0.6 K
    (sigma_1 = 0.4 K on the check), then a noisy argmax with sigma_2 = 0.2 K.

    For K = 10 (T = 6, sigma_1 = 4, sigma_2 = 2): a unanimous query is answered
    with probability Phi(1) = 0.84, a 6-4 split with probability 0.5; each
    answered query costs the data-independent epsilon of :attr:`ConfidentGNMax.epsilon`.
    """
    return ConfidentGNMax(threshold=0.6 * owners, sigma_threshold=0.4 * owners, sigma=0.2 * owners)


def _roc_text(is_member: np.ndarray, scores: np.ndarray, points: int = 60) -> str:
    fpr, tpr, _ = roc(is_member, scores)
    if len(fpr) > points:  # keep the ends and a log-spread of the low-FPR region
        keep = np.unique(np.r_[0, len(fpr) - 1, np.searchsorted(fpr, np.geomspace(1e-3, 1, points))])
        keep = keep[keep < len(fpr)]
        fpr, tpr = fpr[keep], tpr[keep]
    return " ".join(f"{f:.4g}:{t:.4g}" for f, t in zip(fpr, tpr))


def _test_accuracy(oracle: LabelOracle, dataset) -> float:
    return float(np.mean(oracle(dataset.test_x.numpy()) == dataset.test_y.numpy()))


def _total(mechanism, client_queries: int):
    accountant = "auto" if client_queries <= PLD_MAX_QUERIES else "rdp"
    return client_total_epsilon(mechanism, client_queries, delta=DELTA, accountant=accountant)


def _row(prep: Prepared, target: Target, attack: str, scores: np.ndarray, is_member: np.ndarray, *,
         threshold: float, queries: float, accuracy: float, grid: MiaGrid, seed: int,
         client_queries: int | None = None, **extra: Any) -> dict[str, Any]:
    """One attack on one target. ``queries``: the attack's queries per record; the client's total is
    ``queries x records`` unless ``client_queries`` says otherwise (e.g. the MPC session's)."""
    report = evaluate(is_member, scores, threshold=threshold, resamples=grid.resamples, seed=seed)
    if client_queries is None:
        client_queries = int(math.ceil(max(queries, 0) * len(scores)))
    total = _total(target.mechanism, client_queries)
    audit = empirical_epsilon(is_member, scores, delta=DELTA, confidence=AUDIT_CONFIDENCE, seed=seed)
    return {"dataset": prep.dataset.name, "recipe": prep.recipe.kind, "owners": len(prep.models),
            "target": target.name, "aggregation": target.aggregation, "mechanism": target.mechanism_name,
            "epsilon": target.epsilon, "attack": attack, "repeats": extra.pop("repeats", None),
            "client_budget_epsilon": extra.pop("client_budget_epsilon", None), **report.to_row(),
            "queries_per_record": queries, "client_queries": client_queries, "total_epsilon": total.epsilon,
            "total_delta": total.delta, "total_accountant": total.accountant,
            "empirical_epsilon": audit.epsilon_lower, "max_refutable_epsilon": audit.max_refutable,
            "audit_members": audit.members, "audit_non_members": audit.non_members,
            "audit_threshold": audit.tested_threshold, "refuted": bool(audit.epsilon_lower > total.epsilon),
            "test_accuracy": accuracy, **extra, "roc": _roc_text(is_member, scores), "error": ""}


def _attacks(grid: MiaGrid, prep: Prepared, seed: int) -> list[LabelOnlyAttack]:
    image = len(prep.dataset.input_shape) == 3
    # Noise of the scale that flips a memorised label least (images in [0, 1]; standardised tabular features);
    # n = 10 runs through MPC as well, n = 30 only on the simulation.
    std = 0.1 if image else 1.0
    attacks: list[LabelOnlyAttack] = [GapAttack(), AugmentationAttack(n=10, kind="noise", noise_std=std, seed=seed),
                                      AugmentationAttack(n=30, kind="noise", noise_std=std, seed=seed)]
    if image:  # images: the shifts of Choquette-Choo et al. too
        attacks.append(AugmentationAttack(n=10, kind="shift", seed=seed))
    return attacks


def _attack_name(attack: LabelOnlyAttack) -> str:
    if isinstance(attack, AugmentationAttack):
        std = f"-std{attack.noise_std:g}" if attack.kind == "noise" else ""
        return f"augmentation-{attack.kind}{std}-n{attack.n}"
    return attack.name


def target_rows(prep: Prepared, target: Target, grid: MiaGrid, *, seed: int) -> Iterator[dict[str, Any]]:
    """Every attack on one target."""
    ds = prep.dataset
    accuracy = _test_accuracy(target.oracle(prep.models, ds, seed), ds)
    common = dict(accuracy=accuracy, grid=grid, seed=seed)
    for attack in _attacks(grid, prep, seed):
        attack.calibrate(target.oracle(prep.shadows, ds, seed + 1), *prep.shadow_in, *prep.shadow_out)
        scores = attack.scores(target.oracle(prep.models, ds, seed + 2), prep.x, prep.y)
        yield _row(prep, target, _attack_name(attack), scores, prep.is_member, threshold=attack.threshold,
                   queries=attack.queries_per_record(), **common)
    noisy = target.name in ("private_ensemble", "confident_gnmax")
    middle = grid.epsilons[len(grid.epsilons) // 2]
    at_middle = target.name == "private_ensemble" and target.epsilon == middle and target.aggregation == "vote" \
        and target.mechanism_name == "laplace"
    if target.name in ("single_owner", "plaintext_ensemble") or at_middle:
        n = grid.boundary_records  # HopSkipJump: thousands of queries per record, on its own subset (own row)
        pick = np.r_[np.flatnonzero(prep.is_member == 1)[:n], np.flatnonzero(prep.is_member == 0)[:n]]
        s_in, s_out = (a[:n] for a in prep.shadow_in), (a[:n] for a in prep.shadow_out)
        clip = (0.0, 1.0) if len(ds.input_shape) == 3 else None
        attack = BoundaryAttack(**grid.boundary, clip_values=clip, seed=seed)
        attack.calibrate(target.oracle(prep.shadows, ds, seed + 1), *s_in, *s_out)
        scores = attack.scores(target.oracle(prep.models, ds, seed + 2), prep.x[pick], prep.y[pick])
        yield _row(prep, target, "boundary-subset", scores, prep.is_member[pick], threshold=attack.threshold,
                   queries=attack.last_queries_per_record, **common)
    if noisy and (at_middle or target.name == "confident_gnmax"):
        for r in grid.repeats:
            for budget in (None, grid.client_budget):
                oracle = target.oracle(prep.models, ds, seed + 3)
                ledger = None
                if budget is not None:
                    from pricure_crypten.privacy.accounting import PrivacyLedger

                    tmp = tempfile.TemporaryDirectory()
                    # the client's TOTAL budget over all its queries (basic composition adds the deltas of
                    # Gaussian-type mechanisms such as Confident-GNMax too, hence a total delta above 1e-5)
                    ledger = PrivacyLedger(Path(tmp.name) / "ledger.sqlite", total_epsilon=budget[0],
                                           total_delta=budget[1], accountant="basic")
                    oracle = BudgetedOracle(oracle=oracle, ledger=ledger, client_id="attacker")
                attack = RepeatedQueryAttack(repeats=r)
                scores = attack.scores(oracle, prep.x, prep.y)
                yield _row(prep, target, "repeated", scores, prep.is_member, threshold=0.5,
                           queries=attack.answered_rounds, repeats=r,
                           client_budget_epsilon=None if budget is None else budget[0], **common)
                if ledger is not None:
                    ledger.close()
                    tmp.cleanup()


MPC_AUGMENT_RECORDS = 100  # members (and as many non-members) for the augmentation attack through MPC


def mpc_rows(prep: Prepared, grid: MiaGrid, *, seed: int) -> Iterator[dict[str, Any]]:
    """The MPC path against the simulation on the same queries (Laplace, vote, epsilon 1), and the gap attack
    via MPC."""
    from pricure_crypten import Aggregation, Client, ModelOwner, PrivateEnsemble
    from pricure_crypten.experiments.attacks import MPCOracle

    ds = prep.dataset
    mechanism = calibrate(epsilon=1.0)
    owners = [ModelOwner(name=f"owner-{k}", model=m, input_shape=ds.input_shape, num_classes=ds.num_classes)
              for k, m in enumerate(prep.models)]
    per = max(1, math.ceil(grid.mpc_queries / len(prep.x)))  # every record asked `per` times: >= mpc_queries
    queries = np.concatenate([prep.x] * per)
    begin = time.perf_counter()
    # Augmentation (n = 10) through MPC too, on up to MPC_AUGMENT_RECORDS members and as many non-members;
    # the attacker calibrates its threshold on its own shadow owners (its own computation, simulated).
    pick = np.r_[np.flatnonzero(prep.is_member == 1)[:MPC_AUGMENT_RECORDS],
                 np.flatnonzero(prep.is_member == 0)[:MPC_AUGMENT_RECORDS]]
    augment = _attacks(grid, prep, seed)[1]  # noise, n = 10
    augment.calibrate(EnsembleOracle(models=prep.shadows, num_classes=ds.num_classes, input_shape=ds.input_shape,
                                     mechanism=mechanism, seed=seed + 1), *prep.shadow_in, *prep.shadow_out)
    with PrivateEnsemble(owners, aggregation=Aggregation(method="vote", noise=mechanism)) as ensemble:
        mpc = MPCOracle(ensemble=ensemble, client=Client("attacker"))
        mpc_labels = mpc(queries)
        seconds = time.perf_counter() - begin
        augment_scores = augment.scores(mpc, prep.x[pick], prep.y[pick])
    gap_scores = (mpc_labels[:len(prep.x)] == prep.y).astype(float)  # the first time each record was asked
    sim = EnsembleOracle(models=prep.models, num_classes=ds.num_classes, input_shape=ds.input_shape,
                         mechanism=mechanism, seed=seed)(queries)
    classes = np.arange(ds.num_classes)
    table = np.array([[np.sum(mpc_labels == c) for c in classes], [np.sum(sim == c) for c in classes]])
    table = table[:, table.sum(axis=0) > 0]
    chi2, p, dof, _ = stats.chi2_contingency(table)
    target = Target("private_ensemble_mpc", "vote", "laplace", 1.0, mechanism)
    session = len(queries) + len(pick) * int(augment.queries_per_record())  # the client's queries, all of them
    yield _row(prep, target, "gap", gap_scores, prep.is_member, threshold=0.5, queries=1,
               accuracy=float("nan"), grid=grid, seed=seed, client_queries=session, mpc_queries=len(queries),
               chi2=chi2, chi2_dof=dof, chi2_p=p, mpc_seconds=seconds)
    yield _row(prep, target, _attack_name(augment), augment_scores, prep.is_member[pick],
               threshold=augment.threshold, queries=augment.queries_per_record(), accuracy=float("nan"), grid=grid,
               seed=seed, client_queries=session, mpc_queries=len(pick) * int(augment.queries_per_record()))


def mia_suite(*, quick: bool, seed: int, root: Path) -> Iterator[dict[str, Any]]:
    """Rows of the mia suite (datasets whose files are missing are skipped with a note)."""
    grid = QUICK if quick else FULL
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: more intra-op threads only contend on a shared machine
    try:
        yield from _suite(grid, seed=seed, root=root)
    finally:
        torch.set_num_threads(threads)


def _suite(grid: MiaGrid, *, seed: int, root: Path) -> Iterator[dict[str, Any]]:
    columns: list[str] | None = None
    for name in grid.datasets:
        for kind in grid.recipes:
            try:
                prep = prepare(name, kind, grid, root=root, seed=seed)
            except DatasetNotFoundError as err:
                tqdm.write(f"mia: skipping {name}: {err}")
                break
            rows = [r for t in tqdm(targets(grid), desc=f"mia {name} {kind}") for r in target_rows(prep, t, grid,
                                                                                                   seed=seed)]
            if grid.mpc_queries and kind == "overfit":
                rows += list(mpc_rows(prep, grid, seed=seed))
            for row in rows:
                columns = columns or _columns()
                yield {c: row.get(c) for c in columns}


def _columns() -> list[str]:
    metrics = [f"{m}{s}" for m in ("auc", "balanced_accuracy", "tpr_at_1pct_fpr", "tpr_at_01pct_fpr")
               for s in ("", "_low", "_high")]
    return ["dataset", "recipe", "owners", "target", "aggregation", "mechanism", "epsilon", "attack", "repeats",
            "client_budget_epsilon", *metrics, "threshold", "members", "non_members", "queries_per_record",
            "client_queries", "total_epsilon", "total_delta", "total_accountant", "empirical_epsilon",
            "max_refutable_epsilon", "audit_members", "audit_non_members", "audit_threshold", "refuted",
            "test_accuracy", "mpc_queries", "chi2", "chi2_dof", "chi2_p", "mpc_seconds", "roc", "error"]


# ------------------------------------------------------------------------------------------ report

def _curve(text: str) -> tuple[np.ndarray, np.ndarray]:
    pairs = [p.split(":") for p in str(text).split()]
    return np.array([float(f) for f, _ in pairs]), np.array([float(t) for _, t in pairs])


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _yes(v: Any) -> bool:
    """A boolean cell, from the suite (bool) or read back from the CSV ("True"/"False" or 1/0)."""
    return str(v).strip().lower() in ("true", "1", "1.0", "yes")


def _label(row: dict[str, Any]) -> str:
    if row["target"] in ("single_owner", "plaintext_ensemble"):
        return row["target"].replace("_", " ")
    if row["target"] == "confident_gnmax":
        return "Confident-GNMax"
    return f"private, ε={_num(row['epsilon']):.3g}/query"


def _repeated_label(row: dict[str, Any]) -> str:
    budget = _num(row.get("client_budget_epsilon"))
    who = "GNMax" if row["target"] == "confident_gnmax" else f"ε={_num(row['epsilon']):.3g}/query"
    return f"{who}, r={row['repeats']}" + (f", budget ε={budget:.4g} total" if math.isfinite(budget) else "")


def _plotted(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows drawn and tabulated in summary.md: private ensemble only as vote/Laplace (the CSV has all)."""
    return [r for r in rows if r.get("roc") and r["target"] != "private_ensemble_mpc"
            and (r["target"] != "private_ensemble" or (r["aggregation"] == "vote" and r["mechanism"] == "laplace"))]


def roc_plots(rows: Sequence[dict[str, Any]], out: Path) -> list[str]:
    """One PNG per (dataset, recipe): a grid of ROC panels (3 columns), one per attack, log-log axes.

    Colours are per target and the same in every panel (one shared legend
    below the grid); the dotted vertical line is the smallest non-zero FPR the
    sample can measure (1 / non-members); the thin diagonal is chance.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    made = []
    shown = _plotted(rows)
    for dataset, recipe in dict.fromkeys((r["dataset"], r["recipe"]) for r in shown):
        group = [r for r in shown if (r["dataset"], r["recipe"]) == (dataset, recipe)]
        attacks = list(dict.fromkeys(r["attack"] for r in group))
        targets = list(dict.fromkeys(_label(r) for r in group if r["attack"] != "repeated"))
        private = [t for t in targets if t.startswith("private")]
        shades = plt.cm.viridis(np.linspace(0.1, 0.85, max(len(private), 1)))
        colour = {"single owner": "black", "plaintext ensemble": "tab:gray", "Confident-GNMax": "tab:red",
                  **{t: shades[i] for i, t in enumerate(private)}}
        cols = 3
        rows_n = math.ceil(len(attacks) / cols)
        fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3.9 * rows_n + 1.0), squeeze=False)
        for ax, attack in zip(axes.flat, attacks):
            panel = [r for r in group if r["attack"] == attack]
            repeated = attack == "repeated"
            cycle = plt.cm.tab10(np.arange(len(panel)) % 10)
            for k, row in enumerate(panel):
                fpr, tpr = _curve(row["roc"])
                ax.step(np.maximum(fpr, 1e-3), np.maximum(tpr, 1e-3), where="post", lw=1.3,
                        color=cycle[k] if repeated else colour.get(_label(row), "tab:blue"),
                        label=f"{_repeated_label(row)} (AUC {_num(row['auc']):.2f})" if repeated else None)
            floor = 1 / max(int(_num(panel[0]["non_members"])), 1)
            ax.axvline(floor, color="tab:gray", ls=":", lw=1)
            ax.plot([1e-3, 1], [1e-3, 1], color="lightgray", lw=0.8)
            m, n = int(_num(panel[0]["members"])), int(_num(panel[0]["non_members"]))
            ax.set(xscale="log", yscale="log", xlim=(1e-3, 1), ylim=(1e-3, 1.05), xlabel="false-positive rate",
                   ylabel="true-positive rate", title=f"{attack} ({m} + {n} records)")
            ax.title.set_fontsize(10)
            if repeated:
                ax.legend(fontsize=7, loc="lower right")
        for ax in list(axes.flat)[len(attacks):]:
            ax.axis("off")
        handles = [Line2D([], [], color=colour[t], lw=2, label=t) for t in targets]
        handles.append(Line2D([], [], color="tab:gray", ls=":", label="smallest measurable FPR (1 / non-members)"))
        fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=9, frameon=False)
        fig.suptitle(f"Label-only membership inference: {dataset}, {recipe} owners ({len(group)} curves)",
                     fontsize=12)
        fig.tight_layout(rect=(0, 0.9 / (3.9 * rows_n + 1.0) + 0.03 * math.ceil(len(handles) / 4), 1, 0.97))
        name = f"mia_roc_{dataset}_{recipe}.png"
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        made.append(name)
    return made


def mia_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The summary.md section: EVERY attack on each target, the repeated-query rows and the MPC check."""
    if not rows:
        return ""

    def f(v: Any, spec: str = ".3f") -> str:
        x = _num(v)
        return "n/a" if math.isnan(x) else format(x, spec)

    def ci(r: dict[str, Any], name: str) -> str:
        if math.isnan(_num(r[name])):
            return "n/a"
        return f"{f(r[name], '.2f')} [{f(r[name + '_low'], '.2f')}, {f(r[name + '_high'], '.2f')}]"

    def total(r: dict[str, Any]) -> str:
        eps = _num(r["total_epsilon"])
        if math.isinf(eps):
            return "∞ (no noise)"
        return f"{eps:.3g} ({r['total_accountant']}, {f(r['client_queries'], '.0f')} queries)"

    lines = ["## Membership inference (label-only)", "",
             "Every attack on every target (no best-of: choosing the best attack on the evaluation records would "
             "favour the noisiest one). Intervals: 95% stratified bootstrap. TPR@1%FPR / TPR@0.1%FPR are n/a when "
             "there are fewer than 100 / 1000 non-members (not measurable). **Total ε** is the client's total over "
             "ALL its queries to the target (queries per record × records), at δ = 1e-5, accountant named: this is "
             "the guarantee, not ε per query or per record. **Empirical ε ≥** is the audit's 95% lower bound "
             "(threshold chosen on half of the records, Clopper-Pearson on the other half); **refutable ≤** is the "
             "largest ε ANY attack could refute on that half: a total ε above it cannot be refuted by this "
             "experiment, so \"not refuted\" there says nothing. Private ensemble shown as vote/Laplace; the CSV "
             "has every mechanism and aggregation.", "",
             "| dataset | recipe | target | attack | members + non-members | AUC | TPR@1%FPR | TPR@0.1%FPR "
             "| total ε (accountant, queries) | empirical ε ≥ | refutable ≤ | refuted | test acc |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in _plotted(rows):
        if r["attack"] == "repeated":
            continue
        lines.append(f"| {r['dataset']} | {r['recipe']} | {_label(r)} | {r['attack']} | "
                     f"{r['members']} + {r['non_members']} | {ci(r, 'auc')} | {ci(r, 'tpr_at_1pct_fpr')} | "
                     f"{ci(r, 'tpr_at_01pct_fpr')} | {total(r)} | {f(r['empirical_epsilon'], '.2f')} | "
                     f"{f(r['max_refutable_epsilon'], '.2f')} | {'**yes**' if _yes(r['refuted']) else 'no'} | "
                     f"{f(r['test_accuracy'])} |")
    refuted = [r for r in rows if _yes(r.get("refuted")) and math.isfinite(_num(r["total_epsilon"]))]
    lines += ["", f"Rows (of all {len(rows)} in the CSV) where the audit refutes the stated total ε: {len(refuted)}."]
    repeated = [r for r in rows if r["attack"] == "repeated"]
    if repeated:
        lines += ["", "Repeated queries (majority of r answers per record), without and with the client's total "
                  "budget at the ledger (basic composition; total δ budget 0.05 so that Confident-GNMax's "
                  "per-answer δ does not bind first):", "",
                  "| dataset | target | r | client budget (total ε) | answered rounds | AUC | total ε "
                  "| empirical ε ≥ | refutable ≤ |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['dataset']} | {_label(r)} | {r['repeats']} | {f(r['client_budget_epsilon'], '.4g')} | "
                  f"{f(r['queries_per_record'], '.0f')} | {ci(r, 'auc')} | {total(r)} | "
                  f"{f(r['empirical_epsilon'], '.2f')} | {f(r['max_refutable_epsilon'], '.2f')} |"
                  for r in repeated]
    mpc = [r for r in rows if r["target"] == "private_ensemble_mpc"]
    if mpc:
        lines += ["", "MPC path vs plaintext simulation (Laplace, vote, ε = 1 per query, same queries):", ""]
        lines += [f"- {r['dataset']}: chi-square p = {f(r['chi2_p'], '.3g')} over {r['mpc_queries']} queries "
                  f"(dof {r['chi2_dof']}); gap attack through MPC: AUC {f(r['auc'])}; the client's total ε over "
                  f"the session: {total(r)}" for r in mpc if r["attack"] == "gap"]
        lines += [f"- {r['dataset']}: {r['attack']} through MPC ({r['mpc_queries']} queries): AUC {f(r['auc'])} "
                  f"[{f(r['auc_low'])}, {f(r['auc_high'])}]" for r in mpc if r["attack"] != "gap"]
    return "\n".join(lines + [""])


def mia_report(rows: Sequence[dict[str, Any]] | None, out: Path) -> tuple[list[str], str]:
    """``(plot file names, summary.md section)`` for the mia rows (nothing if there are none)."""
    if not rows:
        return [], ""
    return roc_plots(rows, out), mia_markdown(rows)
