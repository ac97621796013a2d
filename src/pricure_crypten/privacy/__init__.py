"""Privacy: the DP noise mechanisms (:mod:`.noise`) and the per-client budget (:mod:`.accounting`).

Neither imports CrypTen: ``pricure budget`` starts without it.
"""
