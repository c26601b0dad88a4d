import torch

from onebit.formats.ledger import ledger_from_state_dict, onebit_layer_bits
from onebit.nn import OneBitLinearTrain


def test_4096_square_is_1_0078_bits():
    assert onebit_layer_bits(4096, 4096) == 16_908_288
    assert round(16_908_288 / 16_777_216, 4) == 1.0078


def test_ledger_counts_real_module_tensors():
    # a real packed 4096x4096 layer, counted from its tensors
    lin = torch.nn.Linear(4096, 4096, bias=False)
    packed = OneBitLinearTrain.from_linear(lin).to_packed()
    sd = {f"layer.{k}": v for k, v in packed.state_dict().items()}
    led = ledger_from_state_dict(sd, {"layer": (4096, 4096)})
    assert led.total_bits == 16_908_288
    assert abs(led.bits_per_linear_weight - 1.0078) < 5e-5
    assert led.per_module()["layer"][0] == 16_908_288


def test_llama7b_layer_set():
    h, f = 4096, 11008
    shapes = [(h, h)] * 4 + [(f, h), (f, h), (h, f)]
    bits = sum(onebit_layer_bits(o, i) for o, i in shapes)
    weights = sum(o * i for o, i in shapes)
    assert 1.0 < bits / weights < 1.01


def test_categories_and_odd_width():
    sd = {"model.embed_tokens.weight": torch.zeros(10, 4), "model.norm.weight": torch.zeros(4),
          "lm_head.weight": torch.zeros(10, 4, dtype=torch.float16),
          "l.weight_packed": torch.zeros(3, 22, dtype=torch.uint8), "l.g": torch.zeros(172, dtype=torch.float16),
          "l.h": torch.zeros(3, dtype=torch.float16)}
    led = ledger_from_state_dict(sd, {"l": (3, 172)})
    cats = led.bits_by_category()
    assert cats["embedding"] == 10 * 4 * 32 and cats["norm"] == 4 * 32 and cats["head"] == 40 * 16
    # 172 columns pad to 22 bytes per row: padding is counted
    assert cats["quantized"] == 3 * 22 * 8 + 16 * (172 + 3)
