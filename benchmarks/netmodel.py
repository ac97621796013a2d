"""A network MODEL (an estimate, not a measurement) of seconds per batch on real links.

All servers run on one host in the measurements, so communication there is
loopback. The model adds what a real network would cost::

    est_seconds_per_batch = mpc_seconds + rounds * rtt + 8 * bytes_sent / bandwidth

* ``mpc_seconds``: the measured server-side time of one batch (median over
  the repeats; the slowest server), which already includes the loopback
  transfers, so the model slightly over-estimates;
* ``rounds``: measured communication rounds per batch of one server (all
  servers run the same number of rounds in lock-step);
* ``bytes_sent``: measured bytes per batch, SUMMED over the servers, sent
  as if over one shared link (conservative: with one full-duplex link per
  server pair the transfer term would shrink by about N).

Dealer traffic (Beaver triples) is not counted by CrypTen and not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Network:
    """A link: round-trip time (seconds) and bandwidth (bits per second)."""

    name: str
    rtt_seconds: float
    bandwidth_bits_per_second: float

    @property
    def label(self) -> str:
        bits = self.bandwidth_bits_per_second
        rate = f"{bits / 1e9:g} Gbit/s" if bits >= 1e9 else f"{bits / 1e6:g} Mbit/s"
        return f"{self.name.upper()} ({self.rtt_seconds * 1e3:g} ms RTT, {rate})"


NETWORKS: tuple[Network, ...] = (
    Network("lan", rtt_seconds=0.2e-3, bandwidth_bits_per_second=10e9),
    Network("wan", rtt_seconds=40e-3, bandwidth_bits_per_second=100e6),
)


def estimate_batch_seconds(mpc_seconds: float, rounds: int, bytes_sent: float, network: Network) -> float:
    """Modelled seconds for one batch on ``network`` (see the module docstring)."""
    return mpc_seconds + rounds * network.rtt_seconds + 8.0 * bytes_sent / network.bandwidth_bits_per_second
