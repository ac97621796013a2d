"""Privacy accounting: how much of a client's budget its answered queries spent.

* :mod:`.base`: the :class:`Accountant` interface and :class:`ReleaseCost`
  (the cost of one release of a calibrated mechanism, as a DP event).
* one accountant per module: :class:`BasicAccountant` and
  :class:`AdvancedAccountant` (diffprivlib's ``BudgetAccountant``),
  :class:`RDPAccountant` and :class:`PLDAccountant` (``dp_accounting``),
  :class:`AutoAccountant` (the default: PLD where finite, else basic),
  :class:`FilterAccountant` (``"rdp-filter"``: the Rényi privacy filter of
  :mod:`.filter`, for charges that depend on outcomes);
  :func:`make_accountant` builds one by name.
* :class:`PrivacyLedger`: the persistent per-client budget policy that
  admits, reserves and charges queries, on :mod:`.store` (the SQLite file,
  WAL mode); :mod:`.cli` is ``pricure budget``.
* :mod:`.outcome`: answered-only accounting of Confident-GNMax
  (:class:`AnsweredOnlyCosts`, ``PrivacyLedger.spend_answered_only``).

Who sees what: all of this runs at the party that admits queries and sees
only mechanism parameters and query counts per client id. The client sees
only whether its query was answered or refused (with its own budget).
"""

from .advanced import DEFAULT_SLACK, AdvancedAccountant
from .auto import AutoAccountant
from .base import Accountant, MechanismLike, ReleaseCost
from .basic import BasicAccountant
from .errors import BudgetExceededError, LedgerError
from .filter import DEFAULT_FILTER_ORDERS, FilterAccountant, RenyiFilter
from .ledger import ENV_VAR, SCHEMA_VERSION, PrivacyLedger, default_ledger_path
from .outcome import AnsweredOnlyCosts, OutcomeSpend
from .pld import PLDAccountant
from .rdp import RDPAccountant
from .registry import ACCOUNTANTS, DEFAULT_ACCOUNTANT, make_accountant
from .spend import Spend
from .status import AuditEntry, BudgetStatus

__all__ = [
    "ACCOUNTANTS",
    "DEFAULT_ACCOUNTANT",
    "DEFAULT_FILTER_ORDERS",
    "DEFAULT_SLACK",
    "ENV_VAR",
    "SCHEMA_VERSION",
    "Accountant",
    "AdvancedAccountant",
    "AnsweredOnlyCosts",
    "AuditEntry",
    "AutoAccountant",
    "BasicAccountant",
    "BudgetExceededError",
    "BudgetStatus",
    "FilterAccountant",
    "LedgerError",
    "MechanismLike",
    "OutcomeSpend",
    "PLDAccountant",
    "PrivacyLedger",
    "RDPAccountant",
    "RenyiFilter",
    "ReleaseCost",
    "Spend",
    "default_ledger_path",
    "make_accountant",
]
