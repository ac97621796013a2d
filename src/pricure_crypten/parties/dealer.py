"""The dealer: a separate process that provides Beaver triples and other correlated randomness.

Who sees what: the dealer (CrypTen's ``TTPServer``, extended to deal many
tuples per request for the offline phase: :class:`~pricure_crypten.mpc.offline.BulkDealer`) knows the seeds of the
triples it deals, so it must not collude with any server; it never receives a
share of a model, a query or a result. It is not a server.

Providers (chosen in :class:`pricure_crypten.config.Cluster`):

* ``"ttp"`` (default, secure): CrypTen's trusted-third-party provider, run in
  this dealer process. Server 0 only relays requests and receives its own
  correction share; no server learns a triple in the clear.
* ``"insecure-tfp"``: CrypTen's default "trusted first party": server 0
  generates every triple in the clear and can therefore unmask every
  multiplication. Only for speed experiments; it warns loudly.
"""

from __future__ import annotations

import secrets
from typing import Any

from .process import adopt_environment, join_rendezvous, set_distributed_timeout, start_heartbeat

# The dealer idles in a receive from server 0 between requests; its own
# timeout must not end it while nobody asks (server 0's timeout bounds a
# stuck request, and the launcher's heartbeat check a silent dealer).
DEALER_IDLE_TIMEOUT = 365 * 24 * 3600.0


def run_dealer(*, world_size: int, rendezvous: str, timeout: float = DEALER_IDLE_TIMEOUT) -> None:
    """Join the MPC as the dealer (rank ``world_size``) and deal until the servers shut down.

    Both modes run this: the in-process cluster's dealer process and ``pricure dealer``.
    ``timeout`` bounds the wait for the servers at the rendezvous and every idle receive.
    """
    join_rendezvous(rank=world_size, world_size=world_size, rendezvous=rendezvous)
    import torch

    from ..mpc._crypten import crypten

    torch.set_num_threads(1)
    set_distributed_timeout(timeout)
    # TTPServer draws every party's triple seed with torch.randint from torch's
    # default generator: seed that generator from the OS CSPRNG first.
    torch.manual_seed(secrets.randbits(63))
    # TTPServer() calls crypten.init(), which reads the provider: select TTP first
    # (no environment override exists; without it the world size is wrong and it hangs).
    crypten.cfg.mpc.provider = "TTP"
    from ..mpc.offline import BulkDealer

    BulkDealer()  # CrypTen's TTPServer plus bulk requests; serves until the servers shut down


def dealer_main(world_size: int, rendezvous: str, heartbeat: Any, parent_pid: int, environment: dict) -> None:
    """Entry point of the dealer process (started by :func:`~.process.party_context`; rank ``world_size``)."""
    adopt_environment(environment)
    start_heartbeat(heartbeat, parent_pid)
    run_dealer(world_size=world_size, rendezvous=rendezvous)
