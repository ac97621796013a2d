"""Figures drawn from committed result files only (``docs/results/``), so each one is reproducible.

``python -m benchmarks.figures`` writes ``docs/exposure-roc-mnist.png``: the ROC
curves of ``docs/results/exposure-mnist.csv`` as a grid, one row per setting
(k3, k3-dup, k25) and one column per attack (gap, augmentation by shifts,
augmentation by noise), one curve per target (one owner, the plaintext
ensemble, the private ensemble at client total epsilon 1, 4 and 16), log axes.
The curves are the points the exposure suite stored (at most 30 per curve).
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPOSURE_CSV = REPO_ROOT / "docs" / "results" / "exposure-mnist.csv"
EXPOSURE_PNG = REPO_ROOT / "docs" / "exposure-roc-mnist.png"

SETTINGS = ("k3", "k3-dup", "k25")
ATTACKS = (("gap", "gap"), ("augmentation-shift-n10", "augmentation, 10 shifts"),
           ("augmentation-noise-std0.1-n10", "augmentation, 10 noisy copies"))
TARGETS = (("single_owner", "inf", "one owner (no noise)", "tab:red"),
           ("plaintext_ensemble", "inf", "plaintext ensemble (no noise)", "tab:orange"),
           ("private_ensemble", "1.0", "private, client total ε = 1", "tab:blue"),
           ("private_ensemble", "4.0", "private, client total ε = 4", "tab:cyan"),
           ("private_ensemble", "16.0", "private, client total ε = 16", "tab:green"))


def _curve(text: str) -> tuple[list[float], list[float]]:
    points = [tuple(float(v) for v in p.split(":")) for p in text.split()]
    return [p[0] for p in points], [p[1] for p in points]


def exposure_roc_grid(rows: Sequence[dict[str, str]], out: Path) -> Path:
    """Draw the grid described in the module docstring from the exposure CSV's rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(SETTINGS), len(ATTACKS), figsize=(12, 11), sharex=True, sharey=True)
    floor = 1e-4
    for i, setting in enumerate(SETTINGS):
        for j, (attack, title) in enumerate(ATTACKS):
            ax = axes[i][j]
            non_members = None
            for target, total, label, colour in TARGETS:
                match = [r for r in rows if r["setting"] == setting and r["attack"] == attack
                         and r["target"] == target and r["total_epsilon"] == total and r["members_subset"] == "all"]
                if not match:
                    continue
                row = match[0]
                non_members = int(row["non_members"])
                fpr, tpr = _curve(row["roc"])
                ax.step([max(f, floor) for f in fpr], [max(t, floor) for t in tpr], where="post", color=colour,
                        label=f"{label}: AUC {float(row['auc']):.3f}")
            ax.plot([floor, 1], [floor, 1], color="grey", linestyle=":", linewidth=1)
            if non_members:
                ax.axvline(1 / non_members, color="black", linestyle="--", linewidth=0.8)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(floor, 1)
            ax.set_ylim(floor, 1)
            ax.set_title(f"{setting}: {title}", fontsize=10)
            ax.legend(fontsize=7, loc="lower right")
            if i == len(SETTINGS) - 1:
                ax.set_xlabel("false positive rate")
            if j == 0:
                ax.set_ylabel("true positive rate")
    fig.suptitle("Label-only membership inference on MNIST (docs/results/exposure-mnist.csv); "
                 "dashed: 1 / non-members, the smallest measurable FPR", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.figures", description=__doc__.splitlines()[0])
    parser.add_argument("--exposure-csv", type=Path, default=EXPOSURE_CSV)
    parser.add_argument("--out", type=Path, default=EXPOSURE_PNG)
    args = parser.parse_args(argv)
    with args.exposure_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    print(f"figures: wrote {exposure_roc_grid(rows, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
