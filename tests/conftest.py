"""Shared fixtures: small owners trained on scikit-learn's digits (offline, seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from pricure_crypten import ModelOwner


def _mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10))


def _cnn():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(4 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 10),
    )


def _train(model, x, y, seed, epochs=60):
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(epochs):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def digits():
    data = load_digits()
    x = torch.tensor(data.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.from_numpy(np.random.default_rng(0).permutation(len(y)))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


@pytest.fixture(scope="session")
def digits_owners(digits):
    """Seven trained owners on disjoint shards: five MLPs and two CNNs (two architectures)."""
    x, y, _, _ = digits
    shards = np.array_split(np.arange(len(y)), 7)
    owners = []
    for i, idx in enumerate(shards):
        torch.manual_seed(100 + i)
        model = _mlp() if i < 5 else _cnn()
        model = _train(model, x[idx], y[idx], seed=i)
        owners.append(ModelOwner(name=f"hospital-{i}", model=model, input_shape=(1, 8, 8), num_classes=10))
    return owners
