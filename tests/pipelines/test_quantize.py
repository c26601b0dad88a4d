"""The quantize pipeline drives a handler through its protocol: checks, calibration, the layer-wise
or block-sequential path, the swap, activation calibration."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from torch import nn

import onebit
from onebit import registry
from onebit.config import QuantConfig
from onebit.errors import OneBitError
from onebit.methods.gptq import GPTQConfig
from onebit.methods.rtn import RTNConfig
from onebit.pipelines import quantize as pq
from onebit.registry import MethodHandler


class CopyLinear(nn.Linear):
    """The "packed" module of the test method: the layer as it was (so outputs stay the fp ones)."""


def _copy(lin: nn.Linear) -> CopyLinear:
    m = CopyLinear(lin.in_features, lin.out_features, lin.bias is not None)
    m.load_state_dict(lin.state_dict())
    return m


@dataclass
class BlockCopyConfig(QuantConfig):
    method = "test-block-copy"

    calib_samples: int = 3
    calib_seqlen: int = 16
    calib_seed: int = 0
    calib_file: str | None = None

    def needs_calibration(self) -> bool:
        return True


class BlockCopyHandler(MethodHandler):
    """A ``"blocks"`` method that records what the pipeline gives it."""

    driver = "blocks"
    calls: dict

    def begin_blocks(self, prefix: str) -> None:
        self.calls = {"begin": prefix, "rows": {}, "blocks": [], "end": None}

    def observe(self, name: str, x: torch.Tensor) -> None:
        self.calls["rows"][name] = self.calls["rows"].get(name, 0) + x.reshape(-1, x.shape[-1]).shape[0]

    def quantize_block(self, block, prefix, lins):
        self.calls["blocks"].append(prefix)
        assert all(n.startswith(prefix) for n in lins) and all(n in self.calls["rows"] for n in lins)
        return {n: _copy(lin) for n, lin in lins.items()}

    def quantize_outside(self, name, linear):
        return _copy(linear)

    def end_blocks(self, packed) -> None:
        self.calls["end"] = sorted(packed)


@pytest.fixture
def block_copy(monkeypatch):
    registry.available_methods()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register_method(BlockCopyConfig)(BlockCopyHandler)
    return BlockCopyConfig


def test_blocks_driver_observes_every_target_in_block_order_and_swaps(block_copy, fp_260k, monkeypatch):
    model = copy.deepcopy(fp_260k)
    ids = torch.randint(0, model.config.vocab_size, (3, 16))
    seen = {}
    real = registry.get_handler

    def spy(config):
        seen["handler"] = h = real(config)
        return h

    monkeypatch.setattr("onebit.api.get_handler", spy)
    out = onebit.quantize(model, block_copy(), progress=False, calib_ids=ids)
    calls = seen["handler"].calls
    names = list(out.config.quantization_config["modules"])
    assert calls["begin"] == "model.layers."
    assert calls["blocks"] == [f"model.layers.{i}." for i in range(fp_260k.config.num_hidden_layers)]
    assert calls["rows"] == {n: ids.numel() for n in names}     # every token, every target, once
    assert calls["end"] == sorted(names)
    mods = dict(out.named_modules())
    assert all(type(mods[n]) is CopyLinear for n in names)
    x = torch.randint(0, fp_260k.config.vocab_size, (2, 12))
    with torch.no_grad():
        assert torch.allclose(out(x).logits, fp_260k(x).logits, atol=1e-5)


def test_layers_driver_checks_every_layer_before_making_calibration_data(fp_260k, monkeypatch):
    model = copy.deepcopy(fp_260k)
    last = onebit.find_linears(model)[-1][0]
    with torch.no_grad():
        model.get_submodule(last).weight[0, 0] = float("nan")

    def no_calibration(*a, **k):
        raise AssertionError("calibration data made before the layer checks")

    monkeypatch.setattr(pq, "calibration_ids", no_calibration)
    with pytest.raises(OneBitError, match="NaN or Inf"):
        onebit.quantize(model, RTNConfig(bits=4, act_bits=8, act_mode="static"), progress=False)
    assert type(model.get_submodule(last)) is nn.Linear   # nothing swapped


def test_static_activation_scales_are_calibrated_after_the_swap(fp_260k):
    ids = torch.randint(0, fp_260k.config.vocab_size, (2, 16))
    model = onebit.quantize(copy.deepcopy(fp_260k), RTNConfig(bits=4, act_bits=8, act_mode="static"),
                            progress=False, calib_ids=ids)
    names = list(model.config.quantization_config["modules"])
    scales = [model.get_submodule(n).act_scale for n in names]
    assert all(s is not None and torch.all(s > 0) for s in scales)
    assert len({float(s.flatten()[0]) for s in scales}) > 1   # one per layer, from its own inputs


def test_needs_calibration_is_the_config_answer():
    assert not onebit.get_handler(RTNConfig()).needs_calibration
    assert onebit.get_handler(RTNConfig(act_bits=8, act_mode="static")).needs_calibration
    assert onebit.get_handler(GPTQConfig()).needs_calibration
    assert onebit.get_handler(GPTQConfig()).driver == "blocks"
