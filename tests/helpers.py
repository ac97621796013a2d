"""Shared test helpers (not a test module)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "medmnist"


def run_fresh_python(code: str, timeout: float = 600) -> dict:
    """Run ``code`` in a fresh interpreter (no torch thread pool, safe to fork) and
    return the JSON object it prints on its last line."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout, cwd=REPO,
    )
    if result.returncode != 0:
        raise AssertionError(f"subprocess failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def mlp_owners(count: int, *, features: int, classes: int, hidden=(8,), seed: int = 0, names: str = "owner{}",
               reseed: bool = True, scale: tuple[float, float] | None = None) -> list:
    """The tests' one factory of untrained MLP owners (features -> hidden... -> classes, ReLU between).

    ``hidden`` is one tuple for every owner or a list of one tuple per owner (``()``: a single linear layer).
    Owner i is built after ``torch.manual_seed(seed + i)`` (``reseed``) or all after one ``manual_seed(seed)``;
    ``scale=(w, b)`` multiplies the last layer's weight by w and its bias by b (clear vote margins).
    Names: ``names.format(i)``.
    """
    import torch
    from torch import nn

    from pricure_crypten import ModelOwner

    shapes = list(hidden) if isinstance(hidden, list) else [tuple(hidden)] * count
    assert len(shapes) == count, "hidden: one tuple, or one per owner"
    if not reseed:
        torch.manual_seed(seed)
    owners = []
    for i, widths in enumerate(shapes):
        if reseed:
            torch.manual_seed(seed + i)
        sizes = [features, *widths, classes]
        layers: list = []
        for a, b in zip(sizes, sizes[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        model = nn.Sequential(*layers[:-1])
        if scale is not None:
            with torch.no_grad():
                model[-1].weight.mul_(scale[0])
                model[-1].bias.mul_(scale[1])
        owners.append(ModelOwner(name=names.format(i), model=model, input_shape=(features,), num_classes=classes))
    return owners


def deployment_owners() -> list:
    """The deployment tests' three owners on 6 features, 3 classes: two 6-8-3 MLPs and one 6-5-5-3."""
    return mlp_owners(3, features=6, classes=3, hidden=[(8,), (8,), (5, 5)], seed=7)


def gaussian_queries(rows: int, features: int, seed: int = 0):
    """``rows`` standard-normal query rows of ``features`` features (numpy, seeded)."""
    import numpy as np

    return np.random.default_rng(seed).normal(size=(rows, features))


def argmax_owners(count: int, num_classes: int = 5) -> list:
    """Owners that all compute label = argmax(x) on x in R^num_classes (an identity layer): the ensemble's
    answer to a query is known in advance, so any row given to the wrong client shows."""
    import torch
    from torch import nn

    from pricure_crypten import ModelOwner

    owners = []
    for i in range(count):
        layer = nn.Linear(num_classes, num_classes)
        with torch.no_grad():
            layer.weight.copy_(torch.eye(num_classes))
            layer.bias.zero_()
        owners.append(ModelOwner(name=f"o{i}", model=nn.Sequential(layer), input_shape=(num_classes,),
                                 num_classes=num_classes))
    return owners


def argmax_queries(client: int, call: int, rows: int, num_classes: int = 5):
    """Queries for :func:`argmax_owners`, as (x, expected labels): client ``client``'s call ``call``, row r with
    its maximum at (client * 7 + call * 3 + r * (client + 1)) % num_classes, a sequence that differs between
    any two clients (and calls)."""
    import numpy as np
    import torch

    labels = (client * 7 + call * 3 + np.arange(rows) * (client + 1)) % num_classes
    x = torch.full((rows, num_classes), -1.0)
    x[torch.arange(rows), torch.from_numpy(labels)] = 2.0
    x += 0.01 * client  # a client-specific offset, so even equal labels come from different rows
    return x, labels


def constant_owners(votes: list[int], num_classes: int) -> list:
    """Owners whose logits do not depend on the query: owner i always votes ``votes[i]``
    (fixed owner outputs, for distribution tests of the noisy aggregation)."""
    import torch
    from torch import nn

    from pricure_crypten import ModelOwner

    owners = []
    for i, label in enumerate(votes):
        layer = nn.Linear(2, num_classes)
        with torch.no_grad():
            layer.weight.zero_()
            layer.bias.copy_(torch.nn.functional.one_hot(torch.tensor(label), num_classes).float() * 4.0)
        owners.append(ModelOwner(name=f"o{i}", model=nn.Sequential(layer), input_shape=(2,), num_classes=num_classes))
    return owners


def cli_exit_code(argv: list[str]) -> int:
    """Run ``pricure ARGV`` in this process; its exit status (argparse refusals exit via SystemExit)."""
    from pricure_crypten.cli import main

    try:
        return main(argv)
    except SystemExit as stop:
        return stop.code


def plain_forward(specs, x):
    """Plaintext float64 evaluation of converted layer specs (torch.nn.functional; independent of the model code)."""
    import torch
    import torch.nn.functional as F

    x = x.double()
    for spec in specs:
        params = [torch.from_numpy(p) for p in spec.params]
        if spec.kind == "linear":
            x = F.linear(x, *params)
        elif spec.kind == "conv2d":
            x = F.conv2d(x, *params, stride=spec.option("stride"), padding=spec.option("padding"),
                         dilation=spec.option("dilation"))
        elif spec.kind == "avgpool2d":
            x = F.avg_pool2d(x, spec.option("kernel_size"), spec.option("stride"), spec.option("padding"))
        elif spec.kind == "maxpool2d":
            x = F.max_pool2d(x, spec.option("kernel_size"), spec.option("stride"), spec.option("padding"))
        elif spec.kind == "flatten":
            x = x.flatten(1)
        elif spec.kind == "relu":
            x = x.clamp(min=0)
        elif spec.kind == "square":
            x = x * x
        elif spec.kind == "affine":
            shape = (1, -1, 1, 1) if x.dim() == 4 else (1, -1)
            x = x * params[0].reshape(shape) + params[1].reshape(shape)
        else:
            raise AssertionError(f"unexpected kind {spec.kind}")
    return x


def tls_closed(sock) -> bool:
    """Whether the server has closed this TLS client socket (a non-blocking peek: EOF or a reset)."""
    import socket
    import ssl

    sock.settimeout(0.05)
    try:
        return sock.recv(1) == b""
    except (socket.timeout, ssl.SSLWantReadError):
        return False
    except OSError:
        return True


def stub_front_door(tmp_path: Path, *, header_timeout: float):
    """A real ``pricure serve`` front door (TLS, limits: 8 connections, keep-alive 5 s, body 10 s) on 127.0.0.1
    over a stub node that answers ``/v1/health`` only and knows no token.

    Returns ``(front, node, port, tls)``: call ``front.stop()`` when done; ``tls`` trusts the door's CA.
    """
    import ssl
    import types

    from pricure_crypten.experiments.launch import free_port
    from pricure_crypten.parties.net.app import start_front_door
    from pricure_crypten.parties.net.credentials import make_ca, make_server_cert

    make_ca(tmp_path / "ca")
    make_server_cert(tmp_path / "ca", "127.0.0.1", tmp_path / "s")
    config = types.SimpleNamespace(certfile=tmp_path / "s" / "server.pem", keyfile=tmp_path / "s" / "server.key",
                                   host="127.0.0.1", port=free_port("127.0.0.1"), keep_alive=5.0,
                                   max_connections=8, header_timeout=header_timeout, body_timeout=10.0)
    node = types.SimpleNamespace(front_door=config, public_info=lambda details: {"alive": True, "details": details},
                                 credentials=types.SimpleNamespace(lookup=lambda token: None))
    front = start_front_door(node)
    return front, node, config.port, ssl.create_default_context(cafile=str(tmp_path / "ca" / "ca.pem"))


# -- private labelling of a pool (tests/test_label.py, tests/test_net_label.py) --

FEATURES, CLASSES = 4, 3  # the label_owners' input features and classes


def label_owners(count: int, seed: int = 0) -> list:
    """``count`` untrained single-layer owners (FEATURES -> CLASSES), names o0, o1, ..."""
    return mlp_owners(count, features=FEATURES, classes=CLASSES, hidden=(), seed=seed, names="o{}", reseed=False)


def label_pool(rows: int, seed: int = 1) -> np.ndarray:
    """A (rows, FEATURES) float64 pool of standard normal queries."""
    return np.random.default_rng(seed).normal(size=(rows, FEATURES))


def plain_votes(owners: list, pool: np.ndarray) -> np.ndarray:
    """The plaintext reference: each owner's torch forward, its argmax, the histogram's argmax (lowest index)."""
    import torch

    x = torch.from_numpy(pool).float()
    histogram = np.zeros((pool.shape[0], owners[0].num_classes), dtype=np.int64)
    for owner in owners:
        with torch.no_grad():
            votes = owner.model(x).numpy().argmax(axis=1)
        histogram[np.arange(pool.shape[0]), votes] += 1
    return histogram.argmax(axis=1)


def agreement_owners() -> list:
    """K = 5 owners on x in R^2 voting argmax(10 x + b_i): on x = (5, 0) all five vote 0 (top count 5); on
    x = (0, 0) they vote their bias's argmax, 0, 0, 0, 1, 1 (top count 3)."""
    import torch
    from torch import nn

    from pricure_crypten import ModelOwner

    owners = []
    for i, bias in enumerate([(1, 0), (1, 0), (1, 0), (0, 1), (0, 1)]):
        layer = nn.Linear(2, 2)
        with torch.no_grad():
            layer.weight.copy_(10.0 * torch.eye(2))
            layer.bias.copy_(torch.tensor(bias, dtype=torch.float32))
        owners.append(ModelOwner(name=f"a{i}", model=nn.Sequential(layer), input_shape=(2,), num_classes=2))
    return owners


# Threshold 4 between the top counts 5 (agree) and 3 (disagree), sigma_threshold 0.1: each is 10 sigma away, so
# the outcome is certain in practice (P[error] < 1e-20 per row); sigma 0.5 on a 5-vs-0 histogram: label 0.
CERTAIN_GNMAX = dict(threshold=4.0, sigma_threshold=0.1, sigma=0.5, delta=1e-5)
AGREE = np.array([1, 1, 0, 1, 0, 0, 1], dtype=bool)  # agreement_pool's rows with x = (5, 0); the others x = (0, 0)


def agreement_pool() -> np.ndarray:
    """The 7-row pool of agreement_owners: x = (5, 0) where AGREE, else (0, 0)."""
    return np.where(AGREE[:, None], np.array([[5.0, 0.0]]), np.zeros((1, 2)))
