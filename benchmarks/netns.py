"""The networked deployment in separate network namespaces, unlimited and under ``tc tbf`` at 100 Mbit/s.

One network namespace per party (server 0..N-1, the dealer, and the client
side: owners and clients), each joined by a veth pair to a bridge that lives
in a further "hub" namespace. The subnet (10.231.0.0/24) exists only inside
these namespaces: nothing is added to the root namespace. Every party is
started with its real command, ``ip netns exec NS python -m pricure_crypten
serve|dealer ...``, with gloo bound to the namespace's veth
(``GLOO_SOCKET_IFNAME``) and the rendezvous on server 0's veth address. The
client side runs in this process, in threads that entered the client
namespace (``setns``), so every byte crosses the veths and the bridge.

K owners upload, C concurrent clients send Q queries (epsilon = inf), once
unlimited and once with ``tc qdisc add dev VETH root tbf rate 100mbit burst
32kbit latency 50ms`` on both ends of every server's veth (a 100 Mbit/s
full-duplex link per server). It prints seconds/query, the MPC bytes and
rounds (CrypTen's exact counts, from every server's health), the bytes that
actually crossed each link (interface counters), the measured slowdown and
the network model's prediction (benchmarks/netmodel.py; latency 0: this
kernel has no netem, so only bandwidth is real here)::

    sudo .venv/bin/python -m benchmarks.netns --servers 2 --owners 10 --clients 4 --queries 400 --batch 25

The parties are launched by the library's one launcher
(:class:`pricure_crypten.experiments.launch.Deployment` with the
:class:`~pricure_crypten.experiments.launch.Namespaces` topology). Everything it
creates (namespaces, veths, the bridge, processes) is removed in a ``finally``,
also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from typing import Any, Sequence

from pricure_crypten.experiments.launch import Deployment, Namespaces, namespace_names, namespaces_unavailable


# ---------------------------------------------------------------- the benchmark


def _phase(d: Deployment, x: Any, chunks: list[range], clients: int) -> dict:
    import numpy as np

    before_health = [d.health(r) for r in range(d.n)]
    before_wire = d.network.counters()
    labels = np.full(len(x), -2)
    errors: list[str] = []

    def work(c: int) -> None:
        with d.remote(f"client{c}") as remote:
            for chunk in chunks[c::clients]:
                try:
                    labels[chunk.start:chunk.stop] = remote.predict(x[chunk.start:chunk.stop]).labels
                except Exception as error:  # noqa: BLE001
                    errors.append(str(error))

    t0 = time.perf_counter()
    for future in [d.submit(work, c) for c in range(clients)]:
        future.result()
    seconds = time.perf_counter() - t0
    after_health = [d.health(r) for r in range(d.n)]
    after_wire = d.network.counters()
    delta = lambda key, r: after_health[r]["totals"][key] - before_health[r]["totals"][key]
    return {
        "seconds": seconds, "seconds_per_query": seconds / len(x), "errors": errors[:3],
        "batches": after_health[0]["batches"] - before_health[0]["batches"],
        "mpc_seconds_server0": delta("mpc_seconds", 0),
        "mpc_bytes_per_server": [delta("bytes", r) for r in range(d.n)],
        "mpc_rounds_server0": delta("rounds", 0),
        "wire_bytes": {p: {k: after_wire[p][k] - before_wire[p][k] for k in after_wire[p]} for p in after_wire},
        "labels": labels,
    }


def main(argv: Sequence[str] | None = None) -> None:
    import numpy as np

    from benchmarks.networked import owners as make_owners
    from benchmarks.netmodel import Network, estimate_batch_seconds

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--servers", type=int, default=2)
    p.add_argument("--owners", type=int, default=10)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--queries", type=int, default=400)
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--rate", default="100mbit", help="tbf rate on every server link (tc syntax)")
    p.add_argument("--rate-bits", type=float, default=100e6, help="the same rate in bit/s, for the model")
    args = p.parse_args(argv)
    reason = namespaces_unavailable()
    if reason:
        sys.exit(f"benchmarks.netns: {reason}")

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)  # cleaned up by the finally below, like Ctrl-C
    owners = make_owners(args.owners)
    x = np.random.default_rng(0).normal(size=(args.queries, owners[0].input_shape[0]))
    chunks = [range(s, min(s + args.batch, args.queries)) for s in range(0, args.queries, args.batch)]
    result: dict[str, Any] = {"servers": args.servers, "owners": args.owners, "clients": args.clients,
                              "queries": args.queries, "batch": args.batch, "deployment": "netns",
                              "rate": args.rate}
    before = namespace_names()
    d = Deployment(servers=args.servers, owners=[o.name for o in owners],
                   clients=[f"client{c}" for c in range(args.clients)], topology=Namespaces(),
                   serve_flags=["--epsilon", "inf", "--max-batch", "256"])
    try:
        t0 = time.perf_counter()
        d.__enter__()
        result["start_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        d.upload_all(owners)
        result["upload_seconds"] = time.perf_counter() - t0
        unlimited = _phase(d, x, chunks, args.clients)
        result["tcp_bits_per_second_s1_to_s0_unlimited"] = d.network.tcp_throughput("s1", "s0", megabytes=200)
        d.network.limit(args.rate)
        result["tbf"] = f"tc qdisc add dev VETH root tbf rate {args.rate} burst 32kbit latency 50ms " \
                        "(both ends of every server's veth)"
        result["tcp_bits_per_second_s1_to_s0_limited"] = d.network.tcp_throughput("s1", "s0")
        limited = _phase(d, x, chunks, args.clients)
        result["tbf_stats"] = d.network.qdisc_stats()
        d.network.unlimit()
    finally:
        d.close()
    result["namespaces_removed"] = namespace_names() == before

    labels_equal = bool(np.array_equal(unlimited.pop("labels"), limited.pop("labels")))
    rate = args.rate_bits
    per_server = limited["mpc_bytes_per_server"]
    # CrypTen counts, per party, the bytes it sends AND receives; summed over the parties they are counted twice
    system_bytes = sum(per_server) / 2
    link = Network("tbf", rtt_seconds=0.0, bandwidth_bits_per_second=rate)
    # benchmarks/netmodel.py as written: every server's count summed, as if over ONE shared link (conservative)
    model_shared = estimate_batch_seconds(unlimited["seconds"], limited["mpc_rounds_server0"], sum(per_server), link)
    # one full-duplex link per server: each link carries what its server sends (half its count), in parallel
    model_per_link = estimate_batch_seconds(unlimited["seconds"], limited["mpc_rounds_server0"],
                                            max(per_server) / 2, link)
    # the same from the bytes that actually crossed the busiest limited direction (TCP/IP, TLS, dealer included)
    wire_busiest = max(max(w["tx_bytes"], w["rx_bytes"]) for p, w in limited["wire_bytes"].items() if p[0] == "s")
    model_wire = unlimited["seconds"] + 8.0 * wire_busiest / rate
    result.update(
        unlimited=unlimited, limited=limited, labels_equal=labels_equal,
        mpc_bytes_system=system_bytes,
        measured_slowdown=limited["seconds"] / unlimited["seconds"],
        model_seconds_per_link=model_per_link, model_slowdown_per_link=model_per_link / unlimited["seconds"],
        model_seconds_shared_link=model_shared, model_slowdown_shared_link=model_shared / unlimited["seconds"],
        wire_bytes_busiest_server_direction=wire_busiest,
        model_seconds_wire=model_wire, model_slowdown_wire=model_wire / unlimited["seconds"],
        rounds_term_at_40ms_rtt=limited["mpc_rounds_server0"] * 0.040,
        same_batching=unlimited["batches"] == limited["batches"],
    )
    print(json.dumps(result), flush=True)
    q = args.queries
    print(f"\n{args.servers} servers + dealer in separate network namespaces; {args.owners} owners, "
          f"{args.clients} concurrent clients, {q} queries in batches of {args.batch}; labels equal: {labels_equal}; "
          f"namespaces removed: {result['namespaces_removed']}", file=sys.stderr)
    print(f"{'link':<26}{'seconds':>9}{'s/query':>10}{'MPC bytes (system)':>20}{'rounds':>8}", file=sys.stderr)
    for name, ph in (("unlimited veth", unlimited), (f"tbf {args.rate} per server", limited)):
        print(f"{name:<26}{ph['seconds']:>9.2f}{ph['seconds_per_query']:>10.4f}"
              f"{sum(ph['mpc_bytes_per_server']) / 2:>20,.0f}{ph['mpc_rounds_server0']:>8}", file=sys.stderr)
    if not result["same_batching"]:
        print(f"note: the runs packed the clients' requests into {unlimited['batches']} and {limited['batches']} "
              "MPC batches: compare seconds only with the same packing (use more --queries)", file=sys.stderr)
    print(f"raw TCP s1 -> s0: {result['tcp_bits_per_second_s1_to_s0_unlimited'] / 1e6:,.0f} Mbit/s unlimited, "
          f"{result['tcp_bits_per_second_s1_to_s0_limited'] / 1e6:,.1f} Mbit/s under tbf", file=sys.stderr)
    print(f"measured slowdown {result['measured_slowdown']:.2f}x; model (exact bytes, rounds x 0 latency): "
          f"per-link {model_per_link:.2f} s ({result['model_slowdown_per_link']:.2f}x), one shared link "
          f"{model_shared:.2f} s ({result['model_slowdown_shared_link']:.2f}x); from the wire bytes of the "
          f"busiest direction {model_wire:.2f} s ({result['model_slowdown_wire']:.2f}x)", file=sys.stderr)


if __name__ == "__main__":
    main()
