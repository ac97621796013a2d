"""``pricure budget``: inspect and administer the privacy ledger.

::

    pricure budget [--ledger PATH] [--total-epsilon E] [--total-delta D] [--accountant NAME] show CLIENT [--json]
    pricure budget [...] list [--json]
    pricure budget [...] reset CLIENT --admin NAME --reason TEXT
    pricure budget [...] void-stale --admin NAME --reason TEXT

The ledger stores spends, not the budget: ``--total-epsilon``,
``--total-delta`` and ``--accountant`` default to the policy the ledger was
last opened with by the servers (``last_policy``), else delta 0 and ``auto``.
``show`` and ``list`` open the ledger read-only. Errors print one line on
stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from .errors import LedgerError
from .ledger import ENV_VAR, BudgetStatus, PrivacyLedger, default_ledger_path
from .registry import ACCOUNTANTS

PROG = "pricure budget"


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]  # one line, no usage dump
        raise _UsageError(message)


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _build_parser() -> _Parser:
    common = _Parser(add_help=False)
    common.add_argument("--ledger", metavar="PATH", default=argparse.SUPPRESS,
                        help=f"ledger file (default: ${ENV_VAR} or {default_ledger_path()})")
    common.add_argument("--total-epsilon", type=_float, metavar="E", default=argparse.SUPPRESS,
                        help="per-client budget epsilon (default: the ledger's last policy)")
    common.add_argument("--total-delta", type=_float, metavar="D", default=argparse.SUPPRESS,
                        help="per-client budget delta (default: the ledger's last policy, else 0)")
    common.add_argument("--accountant", choices=list(ACCOUNTANTS), default=argparse.SUPPRESS,
                        help="composition accountant (default: the ledger's last policy, else auto)")
    parser = _Parser(prog=PROG, parents=[common],
                     description="Show, list and reset clients' differential-privacy budgets.")
    sub = parser.add_subparsers(dest="command", metavar="{show,list,reset,void-stale}")
    sub.required = True
    show = sub.add_parser("show", parents=[common], help="a client's spent and remaining budget")
    show.add_argument("client")
    show.add_argument("--json", action="store_true", help="print JSON")
    lst = sub.add_parser("list", parents=[common], help="every client in the ledger")
    lst.add_argument("--json", action="store_true", help="print JSON")
    reset = sub.add_parser("reset", parents=[common], help="give a client its budget back (audited)")
    reset.add_argument("client")
    reset.add_argument("--admin", required=True, help="who authorises the reset (recorded)")
    reset.add_argument("--reason", required=True, help="why (recorded)")
    void = sub.add_parser("void-stale", parents=[common],
                          help="void reservations of processes that no longer run (audited)")
    void.add_argument("--admin", required=True, help="who authorises it (recorded)")
    void.add_argument("--reason", required=True, help="why (recorded)")
    return parser


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _fmt(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.6g}"


def _describe(status: BudgetStatus) -> str:
    bound = status.accountant
    if status.bound and status.bound != status.accountant:
        bound += f" (bound: {status.bound})"
    return "\n".join([
        f"client      {status.client_id}",
        f"accountant  {bound}",
        f"budget      epsilon {_fmt(status.total_epsilon)}, delta {_fmt(status.total_delta)}",
        f"spent       epsilon {_fmt(status.spent_epsilon)}, delta {_fmt(status.spent_delta)}",
        f"remaining   epsilon {_fmt(status.remaining_epsilon)}, delta {_fmt(status.remaining_delta)}",
        f"answered    {status.answered_queries} queries",
        f"reserved    {status.reserved_queries} queries (unconfirmed; counted as spent)",
        f"refused     {status.refused_queries} queries",
    ])


def _open(args: argparse.Namespace, *, read_only: bool) -> PrivacyLedger:
    path = Path(args.ledger).expanduser() if getattr(args, "ledger", None) else default_ledger_path()
    if not path.exists():  # the CLI never creates a ledger
        raise LedgerError(f"privacy ledger {path}: does not exist (pass --ledger or set ${ENV_VAR})")
    policy = PrivacyLedger.stored_policy(path) or {}
    total_epsilon = getattr(args, "total_epsilon", policy.get("total_epsilon"))
    if total_epsilon is None:
        PrivacyLedger(path, total_epsilon=math.inf, read_only=True).close()  # reports a bad file first
        raise ValueError(f"no budget recorded in ledger {path}: pass --total-epsilon")
    total_delta = getattr(args, "total_delta", policy.get("total_delta", 0.0))
    accountant = getattr(args, "accountant", policy.get("accountant", "auto"))
    options = policy.get("accountant_options") if accountant == policy.get("accountant") else None
    return PrivacyLedger(path, total_epsilon=float(total_epsilon), total_delta=float(total_delta),
                         accountant=accountant, accountant_options=options or None, read_only=read_only,
                         record_policy=False)


def budget_main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``pricure budget``. Returns the exit status (0 ok, 2 error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        try:
            args = _build_parser().parse_args(argv)
        except SystemExit as exc:  # --help
            return int(exc.code or 0)
        if args.command == "show":
            with _open(args, read_only=True) as ledger:
                status = ledger.status(args.client)
            if args.json:
                print(json.dumps(_jsonable(status.to_dict()), sort_keys=True))
            else:
                print(_describe(status))
        elif args.command == "list":
            with _open(args, read_only=True) as ledger:
                statuses = [ledger.status(c) for c in ledger.clients()]
            if args.json:
                print(json.dumps([_jsonable(s.to_dict()) for s in statuses], sort_keys=True))
            else:
                print(f"{'client':<24} {'spent eps':>10} {'remaining':>10} "
                      f"{'answered':>9} {'reserved':>9} {'refused':>8}")
                for s in statuses:
                    print(f"{s.client_id:<24} {_fmt(s.spent_epsilon):>10} {_fmt(s.remaining_epsilon):>10} "
                          f"{s.answered_queries:>9} {s.reserved_queries:>9} {s.refused_queries:>8}")
        elif args.command == "void-stale":
            with _open(args, read_only=False) as ledger:
                voided = ledger.void_stale_reservations(admin=args.admin, reason=args.reason)
            print(f"voided {voided} stale reservations; recorded in the audit table")
        else:
            with _open(args, read_only=False) as ledger:
                before = ledger.reset(args.client, admin=args.admin, reason=args.reason)
            print(f"reset client {before.client_id}: voided spent epsilon {_fmt(before.spent_epsilon)}, "
                  f"delta {_fmt(before.spent_delta)} ({before.answered_queries} answered, "
                  f"{before.reserved_queries} reserved queries); recorded in the audit table")
        return 0
    except (_UsageError, LedgerError, ValueError, TypeError, OSError, sqlite3.Error) as exc:
        message = " ".join(str(exc).split())
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
