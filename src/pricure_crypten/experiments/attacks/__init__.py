"""Label-only membership inference against one owner, the plaintext ensemble and the private ensemble.

Evaluation only (like the rest of :mod:`pricure_crypten.experiments`): the
evaluator builds the targets from plaintext models and knows the ground
truth; each attack sees only the labels its oracle returns.

* :mod:`.oracle`: the targets as label oracles (one owner, the simulated
  ensemble with any mechanism, the real MPC path, a budgeted oracle);
* :mod:`.splits`: owners' shards, held-out non-members, the attacker's pool;
* :mod:`.recipes`: usual and deliberately overfit training;
* attacks: :mod:`.gap`, :mod:`.augmentation`, :mod:`.boundary` (ART's
  HopSkipJump), :mod:`.repeated`; thresholds from :mod:`.shadow` owners;
* :mod:`.metrics`: AUC, balanced accuracy, TPR at low FPR with bootstrap
  intervals, and the DP bound on the ROC;
* :mod:`.audit`: the empirical privacy audit, a lower bound on epsilon from
  an attack's results, and the largest epsilon a sample of a given size can refute.

The ART dependency (``adversarial-robustness-toolbox``) is imported only by
:mod:`.boundary`, when the attack runs.
"""

from .audit import AuditResult, empirical_epsilon, max_refutable_epsilon
from .augmentation import AugmentationAttack
from .base import LabelOnlyAttack
from .boundary import BoundaryAttack, art_classifier
from .gap import GapAttack
from .metrics import (AttackReport, BoundCheck, Estimate, TotalEpsilon, auc, balanced_accuracy, best_threshold,
                      check_dp_bound, client_total_epsilon, composed_epsilon, dp_tpr_bound, evaluate,
                      min_non_members, roc, tpr_at_fpr)
from .oracle import ABSTAIN, BudgetedOracle, EnsembleOracle, LabelOracle, MPCOracle, SingleOwnerOracle
from .recipes import Recipe, train_overfit
from .repeated import RepeatedQueryAttack
from .shadow import calibrate_on_shadows
from .splits import MembershipSplit, make_split, shadow_split

__all__ = [
    "ABSTAIN", "AttackReport", "AuditResult", "AugmentationAttack", "BoundCheck", "BoundaryAttack",
    "BudgetedOracle", "EnsembleOracle", "Estimate", "GapAttack", "LabelOnlyAttack", "LabelOracle", "MPCOracle",
    "MembershipSplit", "Recipe", "RepeatedQueryAttack", "SingleOwnerOracle", "TotalEpsilon", "art_classifier",
    "auc", "balanced_accuracy", "best_threshold", "calibrate_on_shadows", "check_dp_bound", "client_total_epsilon",
    "composed_epsilon", "dp_tpr_bound", "empirical_epsilon", "evaluate", "make_split", "max_refutable_epsilon",
    "min_non_members", "roc", "shadow_split", "tpr_at_fpr", "train_overfit",
]
