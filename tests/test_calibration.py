import pytest
import torch

from onebit.calibration import file_samples, teacher_samples
from onebit.errors import OneBitError


def test_teacher_samples_deterministic(fp_260k):
    a = teacher_samples(fp_260k, 3, 16, seed=1, batch_size=2)
    b = teacher_samples(fp_260k, 3, 16, seed=1, batch_size=2)
    assert a.shape == (3, 16) and torch.equal(a, b)
    assert (a[:, 0] == 1).all()
    assert not torch.equal(a, teacher_samples(fp_260k, 3, 16, seed=2, batch_size=2))


def test_file_samples_refuse_eval_file(tok_260k, data_dir):
    with pytest.raises(OneBitError, match="evaluation file"):
        file_samples(tok_260k, str(data_dir / "wikitext2" / "wiki.test.raw"), 2, 16)


def test_file_samples(tok_260k, tmp_path):
    f = tmp_path / "train.txt"
    f.write_text("Once upon a time there was a cat. " * 50)
    s = file_samples(tok_260k, str(f), 4, 32)
    assert s.shape == (4, 32)


def test_sample_rows_follows_the_distribution():
    from onebit.calibration import sample_rows

    p = torch.tensor([0.1, 0.0, 0.6, 0.3, 0.0])
    gen = torch.Generator().manual_seed(0)
    draws = sample_rows(p.expand(40000, -1), gen)
    freq = torch.bincount(draws, minlength=5).double() / draws.numel()
    assert freq[1] == 0 and freq[4] == 0                      # zero-probability tokens are never drawn
    assert torch.allclose(freq, p.double(), atol=0.01)
    again = sample_rows(p.expand(40000, -1), torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)                          # the generator decides, nothing else
