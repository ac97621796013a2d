"""The ``pricure`` command line: ``pricure demo`` (the main job), ``pricure budget``, and the deployment:
``pricure serve`` / ``pricure dealer`` (one party per process), ``pricure admin`` (CA, certificates,
credentials), ``pricure owner upload`` and ``pricure query`` (remote owner and client; ``--label``:
private labelling of a pool against a deployment), and ``pricure label`` (the same, library mode).

Bad input gets one clear line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from ._validation import AGGREGATIONS, DEFAULT_LOGIT_BOUND, MECHANISM_NAMES


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
    p.add_argument("--deployment", choices=["library", "processes"], default="library",
                   help="processes: every server and the dealer its own 'pricure serve'/'pricure dealer' "
                        "process on 127.0.0.2, ...; owners upload and the client queries over HTTPS")


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
        cluster=Cluster(num_servers=args.servers, colluding=args.colluding), deployment=args.deployment,
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


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _rendezvous(text: str) -> str:
    import os

    if text == "env://":
        if not os.environ.get("MASTER_ADDR") or not os.environ.get("MASTER_PORT"):
            raise argparse.ArgumentTypeError("--rendezvous env:// needs MASTER_ADDR and MASTER_PORT set")
        return f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    if not text.startswith("tcp://"):
        raise argparse.ArgumentTypeError(f"--rendezvous must be tcp://HOST:PORT or env://, got {text!r}")
    _address(text[len("tcp://"):])
    return text


def _seconds(flag: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a number of seconds, got {text!r}") from None
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"{flag} must be > 0 and finite, got {text!r}")
        return value

    return parse


def _megabytes(flag: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a size in MiB (e.g. 64 or 0.5), got {text!r}") from None
        if not (0 < value < float("inf") and value * 1024 * 1024 >= 1):
            raise argparse.ArgumentTypeError(f"{flag} must be a finite size of at least one byte, got {text!r}")
        return value

    return parse


def _server_list(text: str) -> list[str]:
    servers = [s.strip() for s in text.split(",") if s.strip()]
    if len(servers) < 2:
        raise argparse.ArgumentTypeError(f"--servers needs N >= 2 comma-separated HOST:PORT, got {text!r}")
    return servers


def _noise_flags(parser: argparse.ArgumentParser) -> None:
    """The mechanism flags of ``pricure serve`` and ``pricure label`` (with --epsilon, --delta, --aggregation)."""
    parser.add_argument("--mechanism", choices=[*MECHANISM_NAMES, "confident-gnmax"], default="laplace")
    parser.add_argument("--threshold", type=float, default=None, help="confident-gnmax: T")
    parser.add_argument("--sigma-threshold", type=float, default=None, help="confident-gnmax: sigma_1")
    parser.add_argument("--sigma", type=float, default=None, help="confident-gnmax: sigma_2")


def _noise(parser: argparse.ArgumentParser, args: argparse.Namespace):
    """The calibrated mechanism the flags name (one line and exit 2 on a bad combination)."""
    from .privacy.noise import ConfidentGNMax, calibrate

    try:
        if args.mechanism == "confident-gnmax":
            if None in (args.threshold, args.sigma_threshold, args.sigma):
                parser.error("--mechanism confident-gnmax needs --threshold, --sigma-threshold and --sigma")
            return ConfidentGNMax(threshold=args.threshold, sigma_threshold=args.sigma_threshold, sigma=args.sigma,
                                  delta=1e-5 if args.delta is None else args.delta)
        return calibrate(epsilon=args.epsilon, delta=args.delta, mechanism=args.mechanism,
                         aggregation=args.aggregation)
    except (TypeError, ValueError) as error:
        parser.error(str(error))


def _deployment_main(command: str, argv: list[str]) -> int:
    """``pricure serve|dealer|admin|owner|query``: heavy imports only after the flags parse."""
    from pathlib import Path

    parser = _Parser(prog=f"pricure {command}")
    if command == "serve":
        parser.description = "Run one server (a CrypTen party) with its HTTPS front door, until killed."
        parser.add_argument("--rank", type=_at_least(0, "--rank"), required=True)
        parser.add_argument("--servers", type=_at_least(2, "--servers"), required=True, help="number of servers N")
        parser.add_argument("--rendezvous", type=_rendezvous, required=True, help="tcp://HOST:PORT or env://")
        parser.add_argument("--listen", type=_address, required=True, help="HOST:PORT of the front door")
        parser.add_argument("--data-dir", type=Path, required=True)
        parser.add_argument("--cert", type=Path, required=True, help="server certificate (pricure admin cert)")
        parser.add_argument("--key", type=Path, required=True, help="its private key")
        parser.add_argument("--epsilon", type=_epsilon, default=float("inf"), help="epsilon per query")
        parser.add_argument("--delta", type=_delta, default=None)
        _noise_flags(parser)
        parser.add_argument("--aggregation", choices=list(AGGREGATIONS), default="vote")
        parser.add_argument("--logit-bound", type=float, default=DEFAULT_LOGIT_BOUND,
                            help="the owners' logits are clamped to [-bound, bound] under MPC, in (0, 128]")
        parser.add_argument("--colluding", type=_at_least(0, "--colluding"), default=0)
        parser.add_argument("--provider", choices=["ttp", "insecure-tfp"], default="ttp",
                            help="ttp: the separate dealer (secure, default); insecure-tfp: speed experiments only")
        parser.add_argument("--offline-batch", type=_at_least(1, "--offline-batch"), action="append", default=[],
                            help="an MPC batch size whose dealer tuples are stocked ahead of time (repeatable)")
        parser.add_argument("--offline-depth", type=_at_least(1, "--offline-depth"), default=1,
                            help="batches of each --offline-batch size kept in stock")
        parser.add_argument("--budget-epsilon", type=_epsilon, default=float("inf"),
                            help="each client's total epsilon in THIS server's ledger")
        parser.add_argument("--budget-delta", type=_delta, default=0.0)
        parser.add_argument("--accountant", default="auto",
                            help="THIS server's ledger accountant (e.g. basic, rdp, rdp-filter: needed for "
                                 "answered-only labelling)")
        parser.add_argument("--wait", type=_seconds("--wait"), default=120.0,
                            help="seconds to wait for the other parties at the rendezvous")
        parser.add_argument("--timeout", type=_seconds("--timeout"), default=60.0,
                            help="torch.distributed timeout of the servers' collectives")
        parser.add_argument("--incomplete-after", type=_seconds("--incomplete-after"), default=10.0,
                            help="drop a request whose shares have not reached every server by then")
        parser.add_argument("--max-batch", type=_at_least(1, "--max-batch"), default=256,
                            help="rows per MPC batch (requests are packed)")
        parser.add_argument("--max-upload-mb", type=_megabytes("--max-upload-mb"), default=64.0,
                            help="largest model bundle an owner may upload, in MiB")
        parser.add_argument("--threads", type=_at_least(1, "--threads"), default=1)
        parser.add_argument("--max-params", type=_at_least(1, "--max-params"), default=1 << 23,
                            help="parameters (int64 share elements) per uploaded model")
        parser.add_argument("--max-activation", type=_at_least(1, "--max-activation"), default=1 << 20,
                            help="elements of any layer's output per example, in an uploaded model")
        parser.add_argument("--max-client-requests", type=_at_least(1, "--max-client-requests"), default=16,
                            help="pending requests per client on this server (HTTP 429 beyond)")
        parser.add_argument("--max-client-rows", type=_at_least(1, "--max-client-rows"), default=1024,
                            help="pending rows per client on this server (at least --max-batch)")
        parser.add_argument("--max-connections", type=_at_least(1, "--max-connections"), default=128,
                            help="open connections to the front door")
        parser.add_argument("--header-timeout", type=_seconds("--header-timeout"), default=10.0,
                            help="seconds a connection has to finish its TLS handshake, and then to send a "
                                 "request's headers")
        parser.add_argument("--log-retention-days", type=_seconds("--log-retention-days"), default=30.0,
                            help="days a finished request id is kept (replays refused)")
        args = parser.parse_args(argv)
        if args.rank >= args.servers:
            parser.error(f"--rank must be < --servers ({args.servers}), got {args.rank}")
        for flag in ("cert", "key"):
            if not getattr(args, flag).is_file():
                parser.error(f"--{flag} {getattr(args, flag)} is not a file (create it with 'pricure admin cert')")
        from .config import Aggregation, Batching, Cluster, Offline
        from .parties.net.config import Budget, FrontDoor, Seat, check_fits
        from .parties.net.serve import serve

        try:
            aggregation = Aggregation(method=args.aggregation, noise=_noise(parser, args),
                                      logit_bound=args.logit_bound)
            cluster = Cluster(num_servers=args.servers, colluding=args.colluding, provider=args.provider,
                              threads_per_server=args.threads, request_timeout=args.timeout)
            config = dict(
                seat=Seat(rank=args.rank, rendezvous=args.rendezvous, data_dir=args.data_dir, wait=args.wait,
                          incomplete_after=args.incomplete_after, log_retention=args.log_retention_days * 86400.0,
                          argv=("serve", *argv)),
                front_door=FrontDoor(
                    host=args.listen[0], port=args.listen[1], certfile=args.cert, keyfile=args.key,
                    max_upload=int(args.max_upload_mb * 1024 * 1024), max_params=args.max_params,
                    max_activation=args.max_activation, max_client_requests=args.max_client_requests,
                    max_client_rows=args.max_client_rows, max_connections=args.max_connections,
                    header_timeout=args.header_timeout),
                budget=Budget(epsilon=args.budget_epsilon, delta=args.budget_delta,
                              accountant=args.accountant),
                aggregation=aggregation, cluster=cluster, batching=Batching(max_rows=args.max_batch),
                offline=Offline(batch_sizes=tuple(args.offline_batch), depth=args.offline_depth),
            )
            check_fits(**{k: config[k] for k in ("seat", "aggregation", "cluster", "batching", "offline")})
        except (TypeError, ValueError) as error:
            parser.error(str(error))
        return serve(**config)
    if command == "dealer":
        parser.description = "Run the dealer (CrypTen's TTP) as its own process, until killed."
        parser.add_argument("--servers", type=_at_least(2, "--servers"), required=True)
        parser.add_argument("--rendezvous", type=_rendezvous, required=True)
        parser.add_argument("--wait", type=_seconds("--wait"), default=120.0)
        args = parser.parse_args(argv)
        from .parties.net.serve import run_dealer_node

        return run_dealer_node(servers=args.servers, rendezvous=args.rendezvous, wait=args.wait,
                               argv=("dealer", *argv))
    if command == "admin":
        sub = parser.add_subparsers(dest="action", required=True, parser_class=_Parser)
        p = sub.add_parser("ca", help="create the deployment's self-signed CA")
        p.add_argument("--out", type=Path, required=True)
        p = sub.add_parser("cert", help="a server certificate for HOST signed by the CA")
        p.add_argument("--ca", type=Path, required=True, help="the directory with ca.pem and ca.key")
        p.add_argument("--host", required=True, help="the server's IP address or DNS name")
        p.add_argument("--out", type=Path, required=True)
        p = sub.add_parser("add", help="register a client or owner credential on servers' data dirs")
        p.add_argument("--role", choices=["client", "owner"], required=True)
        p.add_argument("--id", required=True, help="the identity (the budget key of a client)")
        p.add_argument("--token-file", type=Path, required=True,
                       help="written (0600) if missing, else its token is registered")
        p.add_argument("--data-dir", type=Path, action="append", required=True)
        p = sub.add_parser("revoke", help="remove an identity's token from servers' data dirs (refused at once)")
        p.add_argument("--id", required=True, help="the identity to revoke")
        p.add_argument("--role", choices=["client", "owner"], default=None, help="only this role's token")
        p.add_argument("--data-dir", type=Path, action="append", required=True)
        args = parser.parse_args(argv)
        from .parties.net import credentials

        if args.action == "ca":
            pem, _ = credentials.make_ca(args.out)
            print(f"CA certificate {pem} (share it); its key {args.out / 'ca.key'} (keep it offline)")
        elif args.action == "cert":
            pem, key = credentials.make_server_cert(args.ca, args.host, args.out)
            print(f"server certificate {pem} and key {key} for {args.host}")
        elif args.action == "revoke":
            removed = credentials.revoke_credential(identity=args.id, role=args.role, data_dirs=args.data_dir)
            print(f"{args.id}: {removed} credential entr{'y' if removed == 1 else 'ies'} removed from "
                  f"{len(args.data_dir)} data dir(s); its token is refused from the next request on")
        else:
            created = credentials.add_credential(role=args.role, identity=args.id, token_file=args.token_file,
                                                 data_dirs=args.data_dir)
            print(f"{args.role} {args.id}: {'new token in' if created else 'token from'} {args.token_file}; "
                  f"registered (hash only) in {len(args.data_dir)} data dir(s)")
        return 0
    common = _Parser(add_help=False)
    common.add_argument("--servers", type=_server_list, required=True, help="HOST:PORT,HOST:PORT,... in rank order")
    common.add_argument("--token-file", type=Path, required=True)
    common.add_argument("--ca", type=Path, required=True, help="the deployment CA certificate (ca.pem)")
    if command == "owner":
        sub = parser.add_subparsers(dest="action", required=True, parser_class=_Parser)
        p = sub.add_parser("upload", parents=[common], help="share a model and upload share i to server i")
        p.add_argument("model", type=Path, help="a torch.save()d nn.Sequential (your own file)")
        p.add_argument("--input-shape", required=True, help="shape of one example, e.g. 30 or 1,28,28")
        p.add_argument("--classes", type=_at_least(2, "--classes"), required=True)
        p.add_argument("--wait", type=_seconds("--wait"), default=0.0,
                       help="seconds to wait for the servers to start and then to serve the upload (default: 0, "
                            "return once stored)")
        sub.add_parser("withdraw", parents=[common], help="remove your model from every server")
        args = parser.parse_args(argv)
        from .parties.net.remote import upload_model, withdraw_model

        if args.action == "withdraw":
            withdraw_model(servers=args.servers, credential=args.token_file, ca=args.ca)
            print("withdrawn")
            return 0
        import torch

        from .parties.owner import ModelOwner

        shape = tuple(int(s) for s in args.input_shape.split(","))
        model = torch.load(args.model, weights_only=False)
        owner = ModelOwner(name="owner", model=model, input_shape=shape, num_classes=args.classes)
        upload_id = upload_model(owner, servers=args.servers, credential=args.token_file, ca=args.ca, wait=args.wait)
        served = "; served by every server" if args.wait > 0 else ""
        print(f"uploaded to {len(args.servers)} servers (upload id {upload_id}){served}")
        return 0
    # query
    parser.add_argument("--servers", type=_server_list, required=True)
    parser.add_argument("--token-file", type=Path, required=True)
    parser.add_argument("--ca", type=Path, required=True)
    parser.add_argument("--input", type=Path, required=True, help="a .npy float array (batch, *input_shape)")
    parser.add_argument("--timeout", type=_seconds("--timeout"), default=60.0)
    parser.add_argument("--label", action="store_true",
                        help="label the whole --input pool under your budget, chunk by chunk (as 'pricure label'); "
                             "needs --out")
    parser.add_argument("--budget", type=_epsilon, default=None,
                        help="--label: optional cap on your total spent epsilon after this call")
    parser.add_argument("--accounting", choices=["conservative", "answered-only"], default="conservative",
                        help="--label: answered-only needs Confident-GNMax servers with --accountant rdp-filter")
    parser.add_argument("--out", type=Path, default=None, help="--label: the labels (.npy, int64)")
    parser.add_argument("--summary", type=Path, default=None, help="--label: the JSON summary (default: stdout)")
    args = parser.parse_args(argv)
    if args.label and args.out is None:
        parser.error("--label needs --out (the labels file)")
    if not args.label and (args.budget is not None or args.accounting != "conservative" or args.out is not None
                           or args.summary is not None):
        parser.error("--budget, --accounting, --out and --summary go with --label")
    import numpy as np

    from .parties.net.remote import RemoteEnsemble

    batch = np.load(args.input, allow_pickle=False)
    with RemoteEnsemble(servers=args.servers, credential=args.token_file, ca=args.ca,
                        timeout=args.timeout) as ensemble:
        if not args.label:
            print(json.dumps({"labels": ensemble.predict(batch).labels.tolist()}))
            return 0
        result = ensemble.label(batch, budget=args.budget, accounting=args.accounting)
    np.save(args.out, result.labels)
    summary = json.dumps(dict(result.summary(), labels=str(args.out), charged=True))
    if args.summary is not None:
        args.summary.write_text(summary + "\n")
    else:
        print(summary)
    return 0


def _label_main(argv: list[str]) -> int:
    """``pricure label``: privately label a pool (.npy) with saved owner models, in library mode."""
    from pathlib import Path

    parser = _Parser(prog="pricure label", description=(
        "Label an unlabelled pool privately with K saved owner models (library mode: the servers and the "
        "dealer are local processes), under the client's budget in a privacy ledger. Writes the labels "
        "(-1: abstained, -2: not sent, refused for budget) and a JSON summary."))
    parser.add_argument("pool", type=Path, help="a .npy float array (rows, *input_shape)")
    parser.add_argument("--owner", type=Path, action="append", required=True,
                        help="a torch.save()d nn.Sequential (repeat once per owner)")
    parser.add_argument("--input-shape", required=True, help="shape of one example, e.g. 30 or 1,28,28")
    parser.add_argument("--classes", type=_at_least(2, "--classes"), required=True)
    parser.add_argument("--epsilon", type=_epsilon, default=1.0, help="epsilon per query (a number or inf)")
    parser.add_argument("--delta", type=_delta, default=None, help="delta per query (gaussian; default 1e-5)")
    _noise_flags(parser)
    parser.add_argument("--aggregation", choices=list(AGGREGATIONS), default="vote")
    parser.add_argument("--servers", type=_at_least(2, "--servers"), default=2)
    parser.add_argument("--max-batch", type=_at_least(1, "--max-batch"), default=256, help="rows per MPC batch")
    parser.add_argument("--ledger", type=Path, default=None, help="the privacy ledger (default: no accounting)")
    parser.add_argument("--budget-epsilon", type=_epsilon, default=None, help="each client's total epsilon")
    parser.add_argument("--budget-delta", type=_delta, default=0.0, help="each client's total delta")
    parser.add_argument("--accountant", default="auto", help="the ledger's accountant (e.g. basic, rdp-filter)")
    parser.add_argument("--client", default="client", help="the client's name (its budget key)")
    parser.add_argument("--budget", type=_epsilon, default=None,
                        help="optional cap on the client's total spent epsilon after this call")
    parser.add_argument("--accounting", choices=["conservative", "answered-only"], default="conservative")
    parser.add_argument("--out", type=Path, required=True, help="the labels (.npy, int64)")
    parser.add_argument("--summary", type=Path, default=None, help="the JSON summary (default: stdout)")
    args = parser.parse_args(argv)
    if args.ledger is not None and args.budget_epsilon is None:
        parser.error("--ledger needs --budget-epsilon (each client's total epsilon)")
    if args.ledger is None and (args.budget is not None or args.accounting == "answered-only"):
        parser.error("--budget and --accounting answered-only need --ledger")
    if not args.pool.is_file():
        parser.error(f"the pool {args.pool} is not a file")
    for path in args.owner:
        if not path.is_file():
            parser.error(f"--owner {path} is not a file")
    import numpy as np
    import torch

    from .config import Aggregation, Batching, Cluster
    from .ensemble import PrivateEnsemble
    from .parties.client import Client
    from .parties.owner import ModelOwner
    try:
        shape = tuple(int(s) for s in args.input_shape.split(","))
    except ValueError:
        parser.error(f"--input-shape must be comma-separated integers, got {args.input_shape!r}")
    pool = np.load(args.pool, allow_pickle=False)
    noise = _noise(parser, args)
    owners = [ModelOwner(name=f"owner{i}", model=torch.load(path, weights_only=False), input_shape=shape,
                         num_classes=args.classes) for i, path in enumerate(args.owner)]
    ledger = None
    if args.ledger is not None:
        from .privacy.accounting import PrivacyLedger

        ledger = PrivacyLedger(args.ledger, total_epsilon=args.budget_epsilon, total_delta=args.budget_delta,
                               accountant=args.accountant)
    try:
        with PrivateEnsemble(owners, aggregation=Aggregation(method=args.aggregation, noise=noise),
                             cluster=Cluster(num_servers=args.servers), batching=Batching(max_rows=args.max_batch),
                             ledger=ledger) as ensemble:
            result = ensemble.label(pool, client=Client(args.client), budget=args.budget,
                                    accounting=args.accounting)
    finally:
        if ledger is not None:
            ledger.close()
    np.save(args.out, result.labels)
    summary = json.dumps(dict(result.summary(), labels=str(args.out), charged=ledger is not None))
    if args.summary is not None:
        args.summary.write_text(summary + "\n")
    else:
        print(summary)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["budget"]:
        from .privacy.accounting.cli import budget_main

        return budget_main(argv[1:])
    if argv[:1] == ["label"]:
        try:
            return _label_main(argv[1:])
        except (ValueError, TypeError, OSError, RuntimeError) as error:
            print(f"pricure label: error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130
    if argv[:1] and argv[0] in ("serve", "dealer", "admin", "owner", "query"):
        try:
            return _deployment_main(argv[0], argv[1:])
        except (ValueError, TypeError, OSError, RuntimeError) as error:
            print(f"pricure {argv[0]}: error: {error}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130
    parser = _Parser(prog="pricure", description="Private collaborative prediction (PRICURE on CrypTen).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _demo_parser(sub)
    sub.add_parser("budget", help="show or reset a client's privacy budget (see 'pricure budget --help')")
    for name, text in (("serve", "run one server with its HTTPS front door"), ("dealer", "run the dealer"),
                       ("admin", "CA, server certificates, credentials"), ("owner", "upload/withdraw a model"),
                       ("query", "private labels from a deployment (--label: a pool under a budget)"),
                       ("label", "privately label a pool under a budget, library mode")):
        sub.add_parser(name, help=f"{text} (see 'pricure {name} --help')")
    args = parser.parse_args(argv)
    try:
        return _run_demo(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as error:
        print(f"pricure: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pricure: interrupted", file=sys.stderr)
        return 130
