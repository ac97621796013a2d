"""What runs inside a CrypTen party, on shares only, plus the sharing the other parties use.

* :mod:`.randomness` and :mod:`.sharing`: the CSPRNG and fixed-point additive
  shares (no CrypTen needed);
* :mod:`.layers`: ``torch.nn`` -> layer specs (the supported set);
* :mod:`.inference` (stacked owners) and :mod:`.baseline` (one module per
  owner), :mod:`.aggregation` (clamp, histogram, noise, argmax): CrypTen modules.

Nothing here knows about processes, queues or the network. Modules that need
CrypTen import it through :mod:`._crypten`, which applies the compatibility
layer first.
"""
