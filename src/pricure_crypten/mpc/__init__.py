"""What runs inside a CrypTen party, on shares only, plus the sharing the other parties use.

* :mod:`.randomness` and :mod:`.sharing`: the CSPRNG and fixed-point additive
  shares (no CrypTen needed);
* :mod:`.layers`: ``torch.nn`` -> layer specs (the supported set);
* :mod:`.stacked` (K owners' layers as stacked ``crypten.nn`` modules with
  registered parameters, and :class:`~.stacked.StackedNetwork`) and
  :mod:`.baseline` (the same modules, one network per owner, evaluated one
  after the other), :mod:`.aggregation` (clamp, histogram, noise, argmax in
  batched comparison passes): CrypTen modules;
* :mod:`.offline`: the dealer's tuples for whole batches, recorded, dealt in
  bulk ahead of time and used once each (the offline/online split).

Nothing here knows about processes, queues or the network. Modules that need
CrypTen import it through :mod:`._crypten`, which applies the compatibility
layer first.
"""
