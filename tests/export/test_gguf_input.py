"""GGUF models in: `onebit quantize/distill/eval/compare` take a .gguf file (or a directory holding
one) through transformers' gguf_file=; a broken one is a one-line error."""
from __future__ import annotations

import shutil

import pytest
import torch

from onebit.errors import OneBitError
from onebit.export.gguf import export_gguf


@pytest.fixture(scope="module")
def s3m_gguf(tmp_path_factory, stories3m):
    out = tmp_path_factory.mktemp("gguf_in") / "stories3M-f16.gguf"
    export_gguf(stories3m, out, embed_type="f32")       # unquantized: F16 linears
    return out


def test_a_gguf_file_loads_as_the_model_it_holds(s3m_gguf, fp_3m):
    from onebit.models import load_model, load_tokenizer

    m = load_model(str(s3m_gguf))
    assert m.config.model_type == "llama" and m.config.hidden_size == 192
    assert m.config.onebit_gguf_tokenizer_pre == "default"
    ids = torch.randint(3, 4000, (1, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        d = (m(ids).logits - fp_3m.float()(ids).logits).abs().max().item()
    assert d < 0.05                                        # F16 linears
    tok = load_tokenizer(str(s3m_gguf))
    assert tok("Once upon a time").input_ids[:1] == [1]


def test_a_directory_with_one_gguf_is_that_model(tmp_path, s3m_gguf):
    from onebit.models import gguf_source

    shutil.copy(s3m_gguf, tmp_path / "m.gguf")
    assert gguf_source(str(tmp_path)) == (tmp_path, "m.gguf")
    shutil.copy(s3m_gguf, tmp_path / "n.gguf")
    with pytest.raises(OneBitError, match="2 GGUF files"):
        gguf_source(str(tmp_path))


def test_quantize_from_gguf_then_export(tmp_path, s3m_gguf):
    from onebit.cli.main import main

    assert main(["quantize", str(s3m_gguf), str(tmp_path / "ck"), "--method", "q1_0", "-q"]) == 0
    s = export_gguf(tmp_path / "ck", tmp_path / "out.gguf")
    assert {t for n, t, *_ in s.tensors if n.startswith("blk.") and "norm" not in n} <= {"q1_0", "q2_0"}


def test_truncated_gguf_is_a_one_line_error(tmp_path, s3m_gguf, capsys):
    from onebit.cli.main import main

    cut = tmp_path / "cut.gguf"
    cut.write_bytes(s3m_gguf.read_bytes()[:-5000])
    assert main(["quantize", str(cut), str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "truncated" in err[0]
    assert not (tmp_path / "x").exists()
