"""Owner-side conversion of torch.nn models (no ONNX) and owner validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pricure_crypten import ModelOwner, UnsupportedLayerError
from pricure_crypten.mpc.layers import convert
from tests.helpers import plain_forward


def _randomise_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=g))
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g))
    return model.eval()


def test_every_supported_layer_converts_and_batchnorm_folds_exactly():
    torch.manual_seed(0)
    model = _randomise_bn(nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, stride=1), nn.ReLU(), nn.AvgPool2d(2), nn.BatchNorm2d(6), nn.Dropout(0.3),
        nn.Flatten(), nn.Linear(6 * 2 * 2, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 3),
    ))
    specs = convert(model)
    kinds = [s.kind for s in specs]
    assert kinds == ["conv2d", "relu", "maxpool2d", "conv2d", "relu", "avgpool2d", "affine", "flatten",
                     "linear", "relu", "linear"]
    x = torch.randn(5, 1, 12, 12)
    with torch.no_grad():
        assert torch.allclose(plain_forward(specs, x), model(x).double(), atol=1e-5)


@pytest.mark.parametrize(
    "layer, name",
    [(nn.Sigmoid(), "Sigmoid"), (nn.Softmax(dim=1), "Softmax"), (nn.Tanh(), "Tanh"), (nn.LSTM(4, 4), "LSTM")],
)
def test_unsupported_layer_is_named(layer, name):
    model = nn.Sequential(nn.Linear(4, 4), layer, nn.Linear(4, 2))
    with pytest.raises(UnsupportedLayerError, match=rf"layer 1 \({name}\) is not supported"):
        convert(model)


def test_non_sequential_model_is_refused():
    class Custom(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(UnsupportedLayerError, match="nn.Sequential"):
        convert(Custom())


def test_owner_checks_output_shape_against_classes():
    model = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ValueError, match=r"expected \(2,\) logits"):
        ModelOwner(name="a", model=model, input_shape=(4,), num_classes=2)
    with pytest.raises(ValueError, match="does not accept inputs"):
        ModelOwner(name="a", model=model, input_shape=(5,), num_classes=3)


def test_owner_shares_are_one_bundle_per_server_and_reconstruct():
    from pricure_crypten.mpc.sharing import reconstruct

    torch.manual_seed(1)
    owner = ModelOwner(name="a", model=nn.Sequential(nn.Linear(4, 3)), input_shape=(4,), num_classes=3)
    bundles = owner.share(num_servers=3)
    assert len(bundles) == 3 and all(b.architecture == owner.architecture for b in bundles)
    weight = reconstruct([b.layers[0].params[0] for b in bundles])
    assert np.allclose(weight, owner.model[0].weight.detach().numpy(), atol=1e-4)


def test_the_shape_dry_run_on_specs_matches_the_model_and_refuses_layers_that_do_not_chain(digits_owners):
    """A server sees only shares; from their shapes alone it must tell a runnable model from a broken one."""
    from pricure_crypten.mpc.layers import LayerSpec, specs_output_shape
    from pricure_crypten.parties.net.wire import WireError, bundle_from_bytes, bundle_to_bytes

    for owner in (digits_owners[0], digits_owners[-1]):  # an MLP and a CNN
        layers = owner.share(num_servers=2)[0].layers
        assert specs_output_shape(layers, owner.input_shape) == (owner.num_classes,)
    cnn = digits_owners[-1]
    bundle = cnn.share(num_servers=2)[0]
    broken = list(bundle.layers)
    first_linear = next(i for i, layer in enumerate(broken) if layer.kind == "linear")
    weight, bias = broken[first_linear].params
    broken[first_linear] = LayerSpec("linear", broken[first_linear].options, (weight[:, :-3], bias))
    with pytest.raises(ValueError, match=rf"layer {first_linear} \(linear\)"):
        specs_output_shape(broken, cnn.input_shape)
    data = bundle_to_bytes(type(bundle)(bundle.owner, bundle.architecture, tuple(broken)),
                           input_shape=cnn.input_shape, num_classes=cnn.num_classes)
    with pytest.raises(WireError, match="do not fit together"):
        bundle_from_bytes(data, owner="hospital-6")
    good = bundle_to_bytes(bundle, input_shape=cnn.input_shape, num_classes=cnn.num_classes)
    assert bundle_from_bytes(good, owner="hospital-6")[2] == cnn.num_classes
