"""The networked deployment: every server its own process (``pricure serve``), with a front door.

* :mod:`.wire`: the formats that cross the network (share arrays, owner
  bundles) and their limits; no pickle ever crosses a host;
* :mod:`.credentials`: the self-signed CA, server certificates and bearer
  tokens provisioned by ``pricure admin`` (servers store only token hashes);
* :mod:`.node`: one server: the FastAPI front door (:mod:`.app`, HTTPS,
  uvicorn) in a thread and the MPC loop (:mod:`.loop`; the same
  :class:`~pricure_crypten.parties.server.ServerState` as the in-process
  mode) agreeing on the order of requests over torch.distributed; its parts
  are :mod:`.config`, :mod:`.requests`, :mod:`.loading`, :mod:`.loop`, and
  :mod:`.serve` runs the process (``pricure serve`` / ``pricure dealer``);
* :mod:`.remote`: the remote parties: :class:`RemoteEnsemble` (a client) and
  :func:`upload_model` (an owner).

Heavy imports (FastAPI, uvicorn, httpx, cryptography, CrypTen) happen inside
functions, so importing this package stays light.
"""
