"""The serving core, shared by the library mode and the networked mode; no processes, no HTTP.

* :mod:`.messages`: the typed messages to and from one server party
  (frozen dataclasses) and the load settings, built once from the config objects;
* :mod:`.packing`: pure functions that pack requests' rows into MPC batches,
  pad them, cut the replies at the same row boundaries and total the costs;
* :mod:`.admission`: how a request is admitted against a privacy ledger
  (reserve before any MPC work, confirm before delivery, roll back otherwise);
* :mod:`.results`: what a caller gets back (:class:`Prediction`, :class:`Cost`, :class:`OfflineCost`).

Who sees what: nothing here reconstructs a value; it moves shares and public figures.
"""
