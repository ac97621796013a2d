"""The dealer: a separate process that provides Beaver triples and other correlated randomness.

Who sees what: the dealer (CrypTen's ``TTPServer``) knows the seeds of the
triples it deals, so it must not collude with any server; it never receives a
share of a model, a query or a result. It is not a server.

Providers:

* ``"ttp"`` (default, secure): CrypTen's trusted-third-party provider, run in
  this dealer process. Server 0 only relays requests and receives its own
  correction share; no server learns a triple in the clear.
* ``"insecure-tfp"``: CrypTen's default "trusted first party": server 0
  generates every triple in the clear and can therefore unmask every
  multiplication. Only for speed experiments; it warns loudly.
"""

from __future__ import annotations

import os
import secrets
import warnings

PROVIDERS = {"ttp": "TTP", "insecure-tfp": "TFP"}
SECURE_PROVIDER = "ttp"


class InsecureProviderWarning(UserWarning):
    """The insecure trusted-first-party provider is in use: server 0 sees every triple."""


def check_provider(provider: str) -> str:
    """Validate a provider name; warn loudly for the insecure one."""
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}; choose 'ttp' (secure, default) or 'insecure-tfp'")
    if provider != SECURE_PROVIDER:
        warnings.warn(
            "INSECURE: provider 'insecure-tfp' lets server 0 generate all Beaver triples in the clear, "
            "so server 0 alone can unmask every secret-shared value. Use only for speed experiments.",
            InsecureProviderWarning,
            stacklevel=3,
        )
    return provider


def needs_dealer(provider: str) -> bool:
    return PROVIDERS[provider] == "TTP"


def dealer_main(world_size: int, rendezvous: str) -> None:
    """Entry point of the dealer process (spawned; rank ``world_size``)."""
    os.environ.update(
        WORLD_SIZE=str(world_size), RANK=str(world_size), RENDEZVOUS=rendezvous, DISTRIBUTED_BACKEND="gloo"
    )
    import torch

    import pricure_crypten  # noqa: F401  (applies the compatibility layer before crypten)
    import crypten

    torch.set_num_threads(1)
    # TTPServer draws every party's triple seed with torch.randint from torch's
    # default generator: seed that generator from the OS CSPRNG first.
    torch.manual_seed(secrets.randbits(63))
    crypten.cfg.mpc.provider = "TTP"
    crypten.mpc.provider.TTPServer()  # serves requests until the servers shut down
