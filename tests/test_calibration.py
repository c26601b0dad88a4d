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
