"""Shared checks of tests/methods/test_mos.py and test_rank.py (not a test module)."""
import copy

import torch

import onebit
from onebit.formats.checkpoint import read_safetensors_header


def round_trip(cfg, fp, tok, path):
    """quantize → save → load; ``(logits before, logits after, ledger, file bytes of tensor data)``."""
    model = copy.deepcopy(fp)
    onebit.quantize(model, copy.deepcopy(cfg), progress=False)
    ids = torch.randint(3, 500, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids).logits
    led = onebit.save(model, path, tokenizer=tok)
    loaded = onebit.load(path)
    with torch.no_grad():
        after = loaded(ids).logits
    f = path / "model.safetensors"
    n, _ = read_safetensors_header(f)
    return before, after, led, f.stat().st_size - 8 - n, loaded


def logits(fp, cfg, ids):
    model = copy.deepcopy(fp)
    onebit.quantize(model, copy.deepcopy(cfg), progress=False)
    with torch.no_grad():
        return model(ids).logits
