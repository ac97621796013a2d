"""Who holds what, and the processes they run in.

* :mod:`.owner` and :mod:`.client`: share locally, reveal locally (the client only);
* :mod:`.server`: one CrypTen party's state and request loop (typed messages: shares in, shares out);
* :mod:`.serving`: the transport-free serving core both modes use (messages, packing, admission, results);
* :mod:`.dealer`: correlated randomness (CrypTen's TTP), never a server;
* :mod:`.cluster`: the in-process launcher, liveness and request routing;
* :mod:`.batching`: concurrent clients, one agreed order, dynamic batching.
"""
