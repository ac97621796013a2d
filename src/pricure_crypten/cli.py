"""The ``pricure`` command line: ``pricure demo`` (the main job) and ``pricure budget``.

Bad input gets one clear line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from ._validation import AGGREGATIONS, MECHANISM_NAMES


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message}\n")


def _epsilon(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--epsilon must be a number or 'inf', got {text!r}") from None
    if value != value or value <= 0:
        raise argparse.ArgumentTypeError(f"--epsilon must be > 0 (or inf), got {text!r}")
    return value


def _delta(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--delta must be a number in [0, 1), got {text!r}") from None


def _at_least(minimum: int, flag: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{flag} must be >= {minimum}, got {value}")
        return value

    return parse


def _demo_parser(sub: argparse._SubParsersAction) -> None:
    from .experiments.demo_config import DemoConfig  # light: no torch

    d = DemoConfig()
    cluster, noise = d.cluster, d.aggregation.noise
    p = sub.add_parser("demo", help="train K owners and run private predictions (the main job)")
    p.add_argument("--dataset", default=d.dataset,
                   help="breast-cancer, digits, a MedMNIST 2D flag (e.g. pneumoniamnist), mnist, fashion-mnist")
    p.add_argument("--data-root", default=None, help="folder with the dataset files (default: $PRICURE_DATA_ROOT)")
    p.add_argument("--download", action="store_true", help="allow downloading a missing dataset file")
    p.add_argument("--owners", type=_at_least(1, "--owners"), default=d.owners, help="number of model owners K")
    p.add_argument("--servers", type=_at_least(2, "--servers"), default=cluster.num_servers,
                   help="number of non-colluding servers N >= 2")
    p.add_argument("--colluding", type=_at_least(0, "--colluding"), default=cluster.colluding,
                   help="servers the noise tolerates colluding")
    p.add_argument("--epsilon", type=_epsilon, default=noise.epsilon, help="epsilon per query (a number or inf)")
    p.add_argument("--delta", type=_delta, default=None, help="delta per query (gaussian; default 1e-5)")
    p.add_argument("--mechanism", choices=list(MECHANISM_NAMES), default=noise.name)
    p.add_argument("--aggregation", choices=list(AGGREGATIONS), default=d.aggregation.method)
    p.add_argument("--partition", choices=["dirichlet", "iid", "quantity"], default=d.partition,
                   help="how the training split is divided among owners")
    p.add_argument("--alpha", type=float, default=d.alpha, help="Dirichlet concentration of the shards")
    p.add_argument("--queries", type=_at_least(1, "--queries"), default=d.queries, help="number of test queries Q")
    p.add_argument("--batch-size", type=_at_least(1, "--batch-size"), default=d.batch_size,
                   help="queries per private prediction call")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")


def demo_config(args: argparse.Namespace):
    """The demo's configuration objects, built from the flags (validated on construction)."""
    from .config import Aggregation, Cluster
    from .experiments.demo_config import DemoConfig
    from .privacy.noise import calibrate

    noise = calibrate(epsilon=args.epsilon, delta=args.delta, mechanism=args.mechanism, aggregation=args.aggregation)
    return DemoConfig(
        dataset=args.dataset, data_root=args.data_root, download=args.download, owners=args.owners,
        partition=args.partition, alpha=args.alpha, queries=args.queries, batch_size=args.batch_size,
        seed=args.seed, quiet=args.quiet or args.json,
        aggregation=Aggregation(method=args.aggregation, noise=noise),
        cluster=Cluster(num_servers=args.servers, colluding=args.colluding),
    )


def _run_demo(args: argparse.Namespace) -> int:
    config = demo_config(args)  # bad settings raise here, before any data is loaded
    from .experiments.demo import format_table, run_demo

    result = run_demo(config)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k not in ("owner_shards",)}))
    else:
        print(format_table(result))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["budget"]:
        from .privacy.accounting.cli import budget_main

        return budget_main(argv[1:])
    parser = _Parser(prog="pricure", description="Private collaborative prediction (PRICURE on CrypTen).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _demo_parser(sub)
    sub.add_parser("budget", help="show or reset a client's privacy budget (see 'pricure budget --help')")
    args = parser.parse_args(argv)
    try:
        return _run_demo(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as error:
        print(f"pricure: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pricure: interrupted", file=sys.stderr)
        return 130
