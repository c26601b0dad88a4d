"""eval.data: evaluation files are recognised by content, wherever they sit and whatever their name."""
from __future__ import annotations

import gzip
import shutil
import subprocess
import sys

import pytest

from onebit.calibration import read_training_text
from onebit.errors import OneBitError
from onebit.eval import data as evdata
from onebit.eval.data import EVAL_RELPATHS, is_evaluation_file


@pytest.mark.parametrize("rel", EVAL_RELPATHS)
def test_renamed_copy_is_an_evaluation_file(rel, data_dir, tmp_path):
    copy = tmp_path / "my_training_text.txt"
    shutil.copyfile(data_dir / rel, copy)
    assert is_evaluation_file(copy)


def test_renamed_copy_refused_without_shared(data_dir, tmp_path, monkeypatch):
    """The built-in table of digests works where no shared/ is found."""
    monkeypatch.setenv("ONEBIT_DATA", str(tmp_path / "no-data-here"))
    assert evdata.data_dir() is not None and not evdata.data_dir().exists()
    for rel in EVAL_RELPATHS:
        copy = tmp_path / ("x" + rel.replace("/", "_"))
        shutil.copyfile(data_dir / rel, copy)
        assert is_evaluation_file(copy), rel
    with pytest.raises(OneBitError, match="evaluation file"):
        read_training_text(str(tmp_path / "xwikitext2_wiki.test.raw"))


def test_decompressed_copy_is_an_evaluation_file(data_dir, tmp_path):
    with gzip.open(data_dir / "c4" / "c4_validation_sample.json.gz", "rb") as f:
        (tmp_path / "web.jsonl").write_bytes(f.read())
    assert is_evaluation_file(tmp_path / "web.jsonl")


def test_builtin_digests_match_the_shared_files(data_dir):
    for rel in EVAL_RELPATHS:
        assert evdata.content_digests(data_dir / rel) & evdata.BUILTIN_EVAL_DIGESTS, rel


def test_ordinary_text_is_not_an_evaluation_file(tmp_path):
    f = tmp_path / "wiki.test.raw"  # an evaluation file's name, other content
    f.write_text("Once upon a time there was a little dog. " * 200)
    assert not is_evaluation_file(f)
    assert not is_evaluation_file(tmp_path / "missing.txt")


def test_cli_refuses_renamed_copy_from_elsewhere(data_dir, stories260k, tmp_path):
    copy = tmp_path / "train.txt"
    shutil.copyfile(data_dir / "wikitext2" / "wiki.test.raw", copy)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "onebit.cli.main", "quantize", stories260k, str(out),
                        "--method", "gptq", "--calib-file", str(copy)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 2 and "evaluation file" in r.stderr, r.stderr
    assert not out.exists()


def test_distill_refuses_evaluation_file_from_elsewhere(data_dir, stories260k, tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "onebit.cli.main", "distill", stories260k, str(out),
                        "--data", str(data_dir / "tinystories" / "tinystories_val_sample.txt")],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 2 and "evaluation file" in r.stderr, r.stderr
