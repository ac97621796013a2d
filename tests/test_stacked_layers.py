"""The stacked CrypTen modules (mpc/stacked.py), layer by layer, against the owners' own torch layers.

Every check runs in 2 real CrypTen parties with a TTP dealer
(:func:`pricure_crypten.experiments.launch.run_parties`), all of them in ONE launch (a module-scoped fixture): each party loads its own
shares of the owners' parameters and of the input, evaluates one stacked module
(or a whole network) and returns its output share. The test reconstructs the
shares; the plaintext reference is each owner's ORIGINAL ``torch.nn`` layer or
model in float64, never the stacked code.

Tolerance. Fixed point with 16 fractional bits: encoding an input, weight or
share rounds by at most 2**-17 ~ 7.6e-6; a product is exact at scale 2**32
and sums of products are exact, and one truncation (2 parties: each divides
its own share) adds at most ~1 ulp = 2**-16 ~ 1.5e-5 (a wrong truncation has
probability ~|x|/2**63, negligible). For a layer of fan-in n <= 32 on values
and weights of magnitude <= ~1.5, the error is <= n * 1.5 * 2 * 2**-17 +
2**-16 ~ 7.5e-4: LAYER_TOL = 1e-3. ReLU, MaxPool, Flatten do no truncation
(they are exact up to the input's encoding). Through the small end-to-end
network (5 truncating layers, weights of norm <= ~1, Square doubling relative
errors) the errors add up to well below E2E_TOL = 1e-2.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pricure_crypten.mpc.layers import LayerSpec, Square, convert
from pricure_crypten.mpc.randomness import SecureRandom
from pricure_crypten.mpc.sharing import reconstruct, share
from pricure_crypten.experiments.launch import run_parties

pytestmark = pytest.mark.mpc

PARTIES = 2
LAYER_TOL = 1e-3
E2E_TOL = 1e-2


# --------------------------------------------------------------------------- party side


def _evaluate(rank, cases, network):
    """Inside party ``rank``: evaluate every case on this party's shares; return output shares."""
    import torch

    from pricure_crypten.mpc._crypten import MPCTensor
    from pricure_crypten.mpc.baseline import SequentialOwners
    from pricure_crypten.mpc.sharing import FRACTIONAL_BITS
    from pricure_crypten.mpc.stacked import StackedNetwork, stacked_module

    def load(shares):
        return MPCTensor.from_shares(torch.from_numpy(shares[rank]), precision=FRACTIONAL_BITS)

    def describe(module):
        return {
            "names": [name for name, _ in module.named_parameters()],
            "count": len(list(module.parameters())),
            "all_mpc": all(isinstance(p, MPCTensor) for p in module.parameters()),
            "encrypted": all(m.encrypted for m in module.modules()),
        }

    results = {}
    for name, (specs, num_owners, layout, x_shares) in cases.items():
        module, layout_after = stacked_module(specs[rank], num_owners, layout)
        out = module(load(x_shares))
        results[name] = {"share": out.share.numpy().copy(), "layout_after": layout_after, **describe(module)}

    stacked_specs, owners_specs, num_owners, query_shares = network
    stacked = StackedNetwork(stacked_specs[rank], num_owners)
    naive = SequentialOwners(owners_specs[rank])
    query = load(query_shares)
    results["network"] = {"stacked": stacked(query).share.numpy().copy(), **describe(stacked)}
    x = query
    for _, step in stacked.stages():
        x = step(x)
    results["stages"] = {"names": [name for name, _ in stacked.stages()], "share": x.share.numpy().copy()}
    results["naive"] = {"naive": naive(query).share.numpy().copy(), "num_owners": naive.num_owners,
                        **describe(naive)}
    return results


# --------------------------------------------------------------------------- test side (plaintext)


def _f64(x):
    return torch.as_tensor(x, dtype=torch.float64)


def _spec_of(module: nn.Module) -> LayerSpec:
    """The owner-side spec of one torch layer, via convert (after a Linear/Conv2d and a ReLU, so BatchNorm stays)."""
    if isinstance(module, nn.BatchNorm2d):
        first: nn.Module = nn.Conv2d(1, module.num_features, 1)
    else:
        first = nn.Linear(1, getattr(module, "num_features", 1))
    return convert(nn.Sequential(first, nn.ReLU(), module))[-1]


def _share_stacked(owner_specs: list[LayerSpec], rng: SecureRandom) -> list[LayerSpec]:
    """Each owner shares its parameters; server i stacks its K shares (what stack_shares does)."""
    per_param = [[share(p, num_parties=PARTIES, rng=rng) for p in s.params] for s in owner_specs]
    first = owner_specs[0]
    return [
        LayerSpec(first.kind, first.options,
                  tuple(np.stack([per_param[k][p][rank] for k in range(len(owner_specs))])
                        for p in range(len(first.params))))
        for rank in range(PARTIES)
    ]


def _share_owner(specs: tuple[LayerSpec, ...], rng: SecureRandom) -> list[tuple[LayerSpec, ...]]:
    """One owner's layers, one tuple of this server's shares per server (as in an OwnerBundle)."""
    per_layer = [[share(p, num_parties=PARTIES, rng=rng) for p in s.params] for s in specs]
    return [tuple(LayerSpec(s.kind, s.options, tuple(sh[rank] for sh in per_layer[i])) for i, s in enumerate(specs))
            for rank in range(PARTIES)]


def _torch_out(module: nn.Module, x) -> np.ndarray:
    with torch.no_grad():
        return module.double().eval()(_f64(x)).numpy()


def _spatial(activations: list[np.ndarray]) -> np.ndarray:
    """K owners' (B, C, H, W) activations in the stacked ``spatial`` layout (B, K*C, H, W)."""
    return np.concatenate(activations, axis=1)


def _owner_major(out: np.ndarray, num_owners: int) -> np.ndarray:
    """(B, K*C, H, W) -> (K, B, C, H, W)."""
    b, kc, h, w = out.shape
    return out.reshape(b, num_owners, kc // num_owners, h, w).transpose(1, 0, 2, 3, 4)


def _identity(out: np.ndarray, num_owners: int) -> np.ndarray:
    return out


def _random_bn(bn: nn.modules.batchnorm._BatchNorm, gen: torch.Generator) -> nn.Module:
    c = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.rand(c, generator=gen) - 0.5)
        bn.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
        bn.weight.copy_(torch.rand(c, generator=gen) + 0.5)
        bn.bias.copy_(torch.rand(c, generator=gen) - 0.5)
    return bn.eval()


def _build_cases():
    """name -> (per-rank stacked spec, K, input layout, input shares), expected (K, B, ...) and a decoder."""
    gen = torch.Generator().manual_seed(12)
    rng = SecureRandom(seed="test_stacked_layers")
    cases, expected, decoders, specs = {}, {}, {}, {}

    def uniform(*shape, low=-1.0):
        return (torch.rand(*shape, generator=gen, dtype=torch.float64) * (1.0 - low) + low).numpy()

    def add(name, modules, layout, x, reference, decoder, spec_fn=_spec_of):
        owner_specs = [spec_fn(m) for m in modules]
        cases[name] = (_share_stacked(owner_specs, rng), len(modules), layout,
                       share(x, num_parties=PARTIES, rng=rng))
        expected[name] = reference
        decoders[name] = decoder
        specs[name] = owner_specs[0]

    def conv_spec(m):
        return convert(nn.Sequential(m))[0]

    def linear_spec(m):
        return convert(nn.Sequential(m))[0]

    # first Conv2d on the common query: one conv with K*O output channels
    torch.manual_seed(1)
    convs = [nn.Conv2d(2, 3, 3, padding=1) for _ in range(2)]
    query = uniform(2, 2, 5, 5)
    add("conv2d_first", convs, "shared", query, np.stack([_torch_out(c, query) for c in convs]),
        _owner_major, conv_spec)

    # later Conv2d: one grouped convolution, K=3 owners with different weights
    torch.manual_seed(2)
    convs = [nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 0)) for _ in range(3)]
    acts = [uniform(2, 2, 6, 5) for _ in convs]
    add("conv2d_grouped", convs, "spatial", _spatial(acts),
        np.stack([_torch_out(c, a) for c, a in zip(convs, acts)]), _owner_major, conv_spec)

    # BatchNorm2d after ReLU (cannot fold): per-channel affine, spatial layout
    bns = [_random_bn(nn.BatchNorm2d(3), gen) for _ in range(2)]
    acts = [uniform(2, 3, 4, 4, low=0.0) for _ in bns]  # post-ReLU activations
    add("affine_spatial", bns, "spatial", _spatial(acts),
        np.stack([_torch_out(bn, a) for bn, a in zip(bns, acts)]), _owner_major)

    # BatchNorm1d after ReLU: per-feature affine, flat layout (K, B, F)
    bns = [_random_bn(nn.BatchNorm1d(4), gen) for _ in range(3)]
    acts = [uniform(2, 4, low=0.0) for _ in bns]
    add("affine_flat", bns, "flat", np.stack(acts),
        np.stack([_torch_out(bn, a) for bn, a in zip(bns, acts)]), _identity)

    # AvgPool2d with padding (count_include_pad=True), spatial layout
    pools = [nn.AvgPool2d(3, stride=2, padding=1) for _ in range(2)]
    acts = [uniform(2, 2, 5, 5) for _ in pools]
    add("avgpool2d", pools, "spatial", _spatial(acts),
        np.stack([_torch_out(p, a) for p, a in zip(pools, acts)]), _owner_major)

    # MaxPool2d, spatial layout
    pools = [nn.MaxPool2d(2, stride=2) for _ in range(2)]
    acts = [uniform(2, 2, 4, 6) for _ in pools]
    add("maxpool2d", pools, "spatial", _spatial(acts),
        np.stack([_torch_out(p, a) for p, a in zip(pools, acts)]), _owner_major)

    # Square (x*x), flat layout
    squares = [Square() for _ in range(2)]
    acts = [uniform(3, 5) * 1.5 for _ in squares]
    add("square", squares, "flat", np.stack(acts),
        np.stack([_torch_out(s, a) for s, a in zip(squares, acts)]), _identity)

    # ReLU, spatial layout
    relus = [nn.ReLU() for _ in range(2)]
    acts = [uniform(2, 2, 3, 3) for _ in relus]
    add("relu", relus, "spatial", _spatial(acts),
        np.stack([_torch_out(r, a) for r, a in zip(relus, acts)]), _owner_major)

    # first Linear on the common query: one matmul with the K weight matrices concatenated
    torch.manual_seed(3)
    linears = [nn.Linear(5, 4) for _ in range(3)]
    query = uniform(2, 5)
    add("linear_first", linears, "shared", query, np.stack([_torch_out(m, query) for m in linears]),
        _identity, linear_spec)

    # later Linear: one batched matmul (K, B, F) @ (K, F, O)
    torch.manual_seed(4)
    linears = [nn.Linear(5, 4) for _ in range(3)]
    acts = [uniform(2, 5) for _ in linears]
    add("linear_batched", linears, "flat", np.stack(acts),
        np.stack([_torch_out(m, a) for m, a in zip(linears, acts)]), _identity, linear_spec)

    # Flatten: spatial (B, K*C, H, W) -> flat (K, B, C*H*W)
    flattens = [nn.Flatten() for _ in range(2)]
    acts = [uniform(2, 2, 2, 3) for _ in flattens]
    add("flatten_spatial", flattens, "spatial", _spatial(acts),
        np.stack([_torch_out(f, a) for f, a in zip(flattens, acts)]), _identity)

    # Flatten on the common query: shared (B, C, H, W) -> shared (B, F)
    flattens = [nn.Flatten() for _ in range(2)]
    query = uniform(2, 2, 2, 3)
    add("flatten_shared", flattens, "shared", query, _torch_out(flattens[0], query), _identity)

    return cases, expected, decoders, specs, rng, gen


LAYOUT_AFTER = {
    "conv2d_first": "spatial", "conv2d_grouped": "spatial", "affine_spatial": "spatial", "affine_flat": "flat",
    "avgpool2d": "spatial", "maxpool2d": "spatial", "square": "flat", "relu": "spatial",
    "linear_first": "flat", "linear_batched": "flat", "flatten_spatial": "flat", "flatten_shared": "shared",
}
EXPECTED_KIND = {
    "conv2d_first": "conv2d", "conv2d_grouped": "conv2d", "affine_spatial": "affine", "affine_flat": "affine",
    "avgpool2d": "avgpool2d", "maxpool2d": "maxpool2d", "square": "square", "relu": "relu",
    "linear_first": "linear", "linear_batched": "linear", "flatten_spatial": "flatten", "flatten_shared": "flatten",
}


def _owner_model(seed: int, gen: torch.Generator) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(2), nn.Flatten(),
        nn.Linear(2 * 3 * 3, 4), Square(), nn.Linear(4, 3),
    )
    _random_bn(model[3], gen)
    return model.eval()


@pytest.fixture(scope="module")
def computed():
    cases, expected, decoders, specs, rng, gen = _build_cases()
    models = [_owner_model(20 + k, gen) for k in range(3)]
    owner_layers = [convert(m) for m in models]
    assert [s.kind for s in owner_layers[0]] == [
        "conv2d", "relu", "maxpool2d", "affine", "flatten", "linear", "square", "linear"]
    stacked = [_share_stacked([layers[i] for layers in owner_layers], rng) for i in range(len(owner_layers[0]))]
    stacked_by_rank = [[stacked[i][rank] for i in range(len(stacked))] for rank in range(PARTIES)]
    per_owner = [_share_owner(layers, rng) for layers in owner_layers]
    owners_by_rank = [[per_owner[k][rank] for k in range(len(models))] for rank in range(PARTIES)]
    query = (torch.rand(3, 1, 6, 6, generator=gen, dtype=torch.float64) * 2 - 1).numpy()
    network = (stacked_by_rank, owners_by_rank, len(models), share(query, num_parties=PARTIES, rng=rng))
    logits = np.stack([_torch_out(m, query) for m in models])  # (K, B, classes)

    results = run_parties(_evaluate, cases, network, num_parties=PARTIES)
    return {
        "cases": cases, "expected": expected, "decoders": decoders, "specs": specs, "results": results,
        "logits": logits, "owner_layers": owner_layers,
    }


def _reconstruct(results, name, key="share"):
    return reconstruct([r[name][key] for r in results])


@pytest.mark.parametrize("name", sorted(LAYOUT_AFTER))
def test_stacked_layer_matches_each_owners_torch_layer(computed, name):
    _, num_owners, _, _ = computed["cases"][name]
    assert computed["specs"][name].kind == EXPECTED_KIND[name]  # e.g. BatchNorm after ReLU is NOT folded
    got = computed["decoders"][name](_reconstruct(computed["results"], name), num_owners)
    want = computed["expected"][name]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=LAYER_TOL, err_msg=name)
    assert computed["results"][0][name]["layout_after"] == LAYOUT_AFTER[name]


@pytest.mark.parametrize("name", sorted(LAYOUT_AFTER))
def test_stacked_layer_parameters_are_crypten_parameters(computed, name):
    result = computed["results"][0][name]
    spec = computed["specs"][name]
    assert result["count"] == len(result["names"]) == len(spec.params)
    assert result["all_mpc"] and result["encrypted"]


def test_stacked_network_equals_every_owners_torch_model(computed):
    got = _reconstruct(computed["results"], "network", "stacked")
    assert got.shape == computed["logits"].shape  # (K, B, classes)
    np.testing.assert_allclose(got, computed["logits"], rtol=0, atol=E2E_TOL)


def test_naive_sequential_owners_gives_the_same_logits(computed):
    naive = _reconstruct(computed["results"], "naive", "naive")
    stacked = _reconstruct(computed["results"], "network", "stacked")
    assert computed["results"][0]["naive"]["num_owners"] == 3
    np.testing.assert_allclose(naive, computed["logits"], rtol=0, atol=E2E_TOL)
    np.testing.assert_allclose(naive, stacked, rtol=0, atol=E2E_TOL)


def test_networks_expose_every_share_as_a_crypten_parameter(computed):
    per_owner = sum(len(layer.params) for layer in computed["owner_layers"][0])
    stacked = computed["results"][0]["network"]
    naive = computed["results"][0]["naive"]
    assert stacked["count"] == len(stacked["names"]) == per_owner  # one stacked array per parameter array
    assert naive["count"] == len(naive["names"]) == 3 * per_owner  # one network per owner
    assert stacked["all_mpc"] and stacked["encrypted"] and naive["all_mpc"] and naive["encrypted"]
    assert stacked["names"][:2] == ["0.weight", "0.bias"]


def test_stacked_network_stages_are_its_layers_in_order(computed):
    names = computed["results"][0]["stages"]["names"]
    assert names == [f"{i}:{layer.kind}" for i, layer in enumerate(computed["owner_layers"][0])]
    got = _reconstruct(computed["results"], "stages")
    np.testing.assert_allclose(got, computed["logits"], rtol=0, atol=E2E_TOL)
