"""The compatibility layer: crypten imports and computes through the package on current torch."""

from __future__ import annotations

import sys
import types

import pytest
import torch

import pricure_crypten
from pricure_crypten import _compat
from tests.helpers import run_fresh_python


def test_patches_applied_on_this_torch():
    # The layer is applied on the first ``import crypten`` after ``import pricure_crypten``.
    import crypten  # noqa: F401  (works after import pricure_crypten)

    major, minor = (int(p) for p in torch.__version__.split(".")[:2])
    if (major, minor) >= (2, 9):
        assert pricure_crypten.applied_patches() == ["onnx-registration-alias", "from-pytorch-torchscript-exporter"]
    assert "torch.onnx._internal.registration" in sys.modules


def test_user_torch_onnx_export_is_untouched():
    import crypten.nn.onnx_converter as oc

    assert _compat.export_needs_torchscript_flag(torch.onnx.export)  # torch's own default is unchanged
    assert getattr(oc._export_pytorch_model, "_pricure_patched", False)
    assert not hasattr(torch.onnx.export, "_pricure_patched")


def test_registration_alias_is_noop_when_old_module_exists(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.onnx._internal.registration", types.ModuleType("old"))
    assert _compat.patch_onnx_registration() is False


def test_exporter_patch_is_noop_on_torch_without_dynamo_default():
    def old_export(model, args, f, *, opset_version=None):  # torch < 2.9 shape: no `dynamo`
        raise AssertionError("not called")

    fake_torch = types.SimpleNamespace(onnx=types.SimpleNamespace(export=old_export))
    fake_converter = types.SimpleNamespace(_export_pytorch_model=lambda f, m, x: f, _OPSET_VERSION=17)
    assert _compat.patch_from_pytorch_exporter(fake_converter, fake_torch) is False


def test_exporter_patch_passes_dynamo_false():
    calls = []

    def new_export(model, args=(), f=None, *, dynamo=True, **kwargs):
        calls.append(dynamo)

    fake_torch = types.SimpleNamespace(
        onnx=types.SimpleNamespace(export=new_export, OperatorExportTypes=types.SimpleNamespace(ONNX=0))
    )
    fake_converter = types.SimpleNamespace(_export_pytorch_model=lambda f, m, x: f, _OPSET_VERSION=17)
    assert _compat.patch_from_pytorch_exporter(fake_converter, fake_torch) is True
    fake_converter._export_pytorch_model("f", "model", "input")
    assert calls == [False]
    assert fake_torch.onnx.export is new_export  # torch's export itself is not replaced
    assert _compat.patch_from_pytorch_exporter(fake_converter, fake_torch) is False  # idempotent


@pytest.mark.mpc
def test_crypten_computes_and_from_pytorch_matches_plaintext():
    out = run_fresh_python(
        """
        import json, torch
        import pricure_crypten
        import crypten
        crypten.init()
        torch.manual_seed(0)
        a, b = torch.randn(4, 5), torch.randn(5, 3)
        x, y = crypten.cryptensor(a), crypten.cryptensor(b)
        matmul_err = (x.matmul(y).get_plain_text() - a @ b).abs().max().item()
        argmax_ok = bool((x.argmax(dim=1, one_hot=False).get_plain_text() == a.argmax(dim=1)).all())
        model = torch.nn.Sequential(
            torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.AvgPool2d(2), torch.nn.Flatten(),
            torch.nn.Linear(4 * 13 * 13, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3)).eval()
        inp = torch.randn(2, 1, 28, 28)
        enc = crypten.nn.from_pytorch(model, inp).encrypt()
        err = (enc(crypten.cryptensor(inp)).get_plain_text() - model(inp)).abs().max().item()
        print(json.dumps({"torch": torch.__version__, "matmul_err": matmul_err, "argmax_ok": argmax_ok,
                          "from_pytorch_err": err}))
        """
    )
    assert out["torch"].startswith("2.")
    assert out["matmul_err"] < 1e-3
    assert out["argmax_ok"]
    assert out["from_pytorch_err"] < 1e-2
