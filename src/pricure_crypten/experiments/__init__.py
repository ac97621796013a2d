"""Experiments: data, partitions, owner models, training, the plaintext reference and the demo.

Evaluation only: these modules see everything (every owner's data and model,
the queries, the plaintext votes) and are never deployed or imported by the
layers below (``mpc``, ``privacy``, ``parties``, ``ensemble``).
"""
