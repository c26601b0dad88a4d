"""LoRA on a packed stories260K: a few steps lower the held-aside loss; the adapters save, and
onebit.load and from_pretrained rebuild them (same logits); one-line errors for bad settings."""
import copy
import random

import pytest
import torch

import onebit
from onebit.distill.finetune import FinetuneConfig, finetune, select_targets, split_holdout
from onebit.errors import OneBitError
from onebit.eval.perplexity import tokenize_text


def training_text(n: int = 200, seed: int = 0) -> str:
    """A small made-up training text (not an evaluation file): short stories from a template."""
    rng = random.Random(seed)
    names, things = ["Lily", "Tom", "Sue", "Ben", "Max"], ["ball", "cat", "tree", "cake", "boat"]
    return "\n\n".join(f"{a} had a red {t}. {a} liked the {t} very much. One day the {t} was gone. {a} was sad."
                       for a, t in ((rng.choice(names), rng.choice(things)) for _ in range(n)))


@pytest.fixture(scope="module")
def packed_260k(fp_260k):
    return onebit.quantize(copy.deepcopy(fp_260k), onebit.OneBitConfig(), progress=False)


@pytest.fixture(scope="module")
def ids_260k(tok_260k):
    return tokenize_text(tok_260k, training_text())


def test_few_steps_lower_the_held_aside_loss_and_round_trip(packed_260k, ids_260k, tok_260k, tmp_path):
    model = copy.deepcopy(packed_260k)
    qc = model.config.quantization_config
    train_ids, held = split_holdout(ids_260k, 0.1, 32)
    assert torch.equal(torch.cat([train_ids, held]), ids_260k) and held.numel() >= 32
    x = torch.randint(0, model.config.vocab_size, (2, 24))
    with torch.no_grad():
        base = model(x).logits
    cfg = FinetuneConfig(rank=4, alpha=8, targets=("q_proj", "v_proj", "down_proj"), steps=12, lr=1e-2,
                         seqlen=32, batch_size=4, warmup=2)
    res = finetune(model, qc, train_ids, held, cfg)
    assert res.ppl_after < 0.8 * res.ppl_before, (res.ppl_before, res.ppl_after)
    assert len(res.adapters) == 3 * model.config.num_hidden_layers and res.steps == 12
    assert all(n.endswith(("q_proj", "v_proj", "down_proj")) for n in res.adapters)
    assert not any(p.requires_grad for p in model.parameters())
    spec = model.config.onebit_adapters
    assert spec["rank"] == 4 and sorted(spec["modules"]) == sorted(res.adapters)
    # the packed tensors are untouched: only the adapters were trained
    for k, t in packed_260k.state_dict().items():
        assert torch.equal(model.state_dict()[k], t), k
    with torch.no_grad():
        got = model(x).logits
    assert not torch.allclose(got, base)

    onebit.save(model, tmp_path / "ft", tokenizer=tok_260k)
    loaded = onebit.load(tmp_path / "ft")
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, got)
    assert any(e.name.endswith(".lora.A") for e in onebit.checkpoint_ledger(tmp_path / "ft").entries)
    from onebit.integrations import hf

    if hf._registered:
        from transformers import AutoModelForCausalLM

        with torch.no_grad():
            assert torch.equal(AutoModelForCausalLM.from_pretrained(str(tmp_path / "ft"))(x).logits, got)
    with pytest.raises(OneBitError, match="already has LoRA adapters"):  # finetune the base, not this
        finetune(loaded, loaded.config.quantization_config, train_ids, held, cfg)


def test_other_methods_train_too(fp_260k, ids_260k):
    from onebit.registry import get_handler_cls

    model = onebit.quantize(copy.deepcopy(fp_260k), get_handler_cls("rtn").config_cls(bits=2, group_size=32),
                            progress=False)
    train_ids, held = split_holdout(ids_260k, 0.1, 32)
    res = finetune(model, model.config.quantization_config, train_ids, held,
                   FinetuneConfig(rank=2, steps=6, lr=1e-2, seqlen=32, batch_size=4, warmup=1))
    assert res.ppl_after < res.ppl_before


def test_bad_settings_are_one_line_errors(packed_260k, ids_260k):
    qc = packed_260k.config.quantization_config
    with pytest.raises(OneBitError, match="matches no packed layer"):
        select_targets(qc["modules"], ("qproj",))
    assert select_targets(qc["modules"], ("all",)) == list(qc["modules"])
    with pytest.raises(OneBitError, match="too few"):
        split_holdout(ids_260k[:100], 0.1, 64)
    for kw, msg in [({"rank": 0}, "--rank"), ({"holdout": 1.0}, "--holdout"), ({"steps": 0}, "--steps"),
                    ({"lr": -1.0}, "--lr")]:
        with pytest.raises(OneBitError, match=msg):
            FinetuneConfig(**kw).validate()
    model = copy.deepcopy(packed_260k)
    train_ids, held = split_holdout(ids_260k, 0.1, 32)
    with pytest.raises(OneBitError, match="--merge"):  # packed weights: merging is not exact
        finetune(model, qc, train_ids, held, FinetuneConfig(seqlen=32, steps=1, merge=True))
    assert not any(hasattr(m, "lora") for m in model.modules())  # refused before anything was attached
