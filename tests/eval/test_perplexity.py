import math

import pytest
import torch

from onebit.errors import OneBitError
from onebit.eval.data import is_evaluation_file, load_text, wikitext2_rows
from onebit.eval.perplexity import perplexity, windows


def test_windows_non_overlapping_remainder_dropped():
    w = windows(torch.arange(10), 3)
    assert w.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert windows(torch.arange(10), 3, max_windows=2).shape == (2, 3)
    with pytest.raises(OneBitError):
        windows(torch.arange(2), 3)


class Uniform(torch.nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        class O:
            pass
        o = O()
        o.logits = torch.zeros(*ids.shape, self.vocab) + self.p
        return o


def test_uniform_model_has_vocab_perplexity():
    r = perplexity(Uniform(7), torch.randint(0, 7, (50,)), 10, progress=False)
    assert math.isclose(r.ppl, 7.0, rel_tol=1e-6) and r.windows == 5 and r.tokens == 45


def test_wikitext_rows_like_hf():
    assert wikitext2_rows(" \n = A = \n \n text \n") == ["", " = A = \n", "", " text \n", ""]


def test_wikitext2_joined(data_dir):
    t = load_text("wikitext2")
    assert t.startswith("\n\n = Robert Boulter = \n\n\n\n\n Robert Boulter is")


def test_eval_files_are_known(data_dir):
    assert is_evaluation_file(data_dir / "wikitext2" / "wiki.test.raw")
    assert is_evaluation_file(data_dir / "tinystories" / "tinystories_val_sample.txt")
    assert is_evaluation_file(data_dir / "piqa" / "valid.jsonl")


def test_fp_perplexity_of_stories260k(fp_260k, tok_260k):
    from onebit.eval.perplexity import dataset_perplexity

    r = dataset_perplexity(fp_260k, tok_260k, "tinystories", 512, max_windows=4, progress=False)
    assert 2 < r.ppl < 10  # SOURCES.md measured 5.05 over the whole sample
