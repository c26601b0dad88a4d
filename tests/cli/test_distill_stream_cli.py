"""``onebit distill --blockwise-steps K --streaming`` on stories260K: the same checkpoint as in memory
(teacher-data cache or a training file), readable by ``onebit eval ppl``; what it cannot do is a
one-line error, exit 2, before anything loads."""
import pytest
import torch

import onebit
from onebit.cli.main import main

TEXT = ("Once upon a time there was a little girl named Lily. She liked to play in the park with "
        "her dog. One day the dog found a big red ball under a tree, and they played all day. ") * 40
BLOCKS = ["--blockwise-steps", "2", "--block-batch-size", "4", "--samples", "8", "--seqlen", "32",
          "--steps", "0", "-q"]


def _err(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("onebit: error:") and "\n" not in err, err
    return err


def _same(a, b):
    sa, sb = onebit.load(a).state_dict(), onebit.load(b).state_dict()
    assert sa.keys() == sb.keys()
    for k, v in sa.items():
        assert torch.allclose(sb[k].float(), v.float(), rtol=1e-4, atol=1e-5), k


def test_streamed_from_the_teacher_data_cache_equals_in_memory(stories260k, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    assert main(["distill", stories260k, str(tmp_path / "mem"), "--data-cache", cache, "--no-streaming",
                 *BLOCKS]) == 0  # in memory: generates the teacher data and caches it
    capsys.readouterr()
    assert main(["distill", stories260k, str(tmp_path / "st"), "--data-cache", cache, "--streaming", *BLOCKS]) == 0
    out = capsys.readouterr().out
    assert "(streaming: one block in memory at a time, on cpu)" in out and "bits/weight" in out
    _same(tmp_path / "mem", tmp_path / "st")
    # another seed's data is not cached: streaming cannot generate it
    assert main(["distill", stories260k, str(tmp_path / "st2"), "--data-cache", cache, "--streaming",
                 "--data-seed", "1", *BLOCKS]) == 2
    assert "--data FILE" in _err(capsys)
    assert not (tmp_path / "st2").exists()


def test_streamed_from_a_training_file_is_evaluated(stories260k, tmp_path, capsys):
    train = tmp_path / "train.txt"
    train.write_text(TEXT)
    args = ["--data", str(train), *BLOCKS]
    assert main(["distill", stories260k, str(tmp_path / "mem"), "--no-streaming", *args]) == 0
    assert main(["distill", stories260k, str(tmp_path / "st"), "--streaming", *args]) == 0
    _same(tmp_path / "mem", tmp_path / "st")
    capsys.readouterr()
    assert main(["eval", "ppl", str(tmp_path / "st"), "--data", str(train), "--seqlen", "64",
                 "--max-windows", "2"]) == 0
    assert "ppl" in capsys.readouterr().out.lower()
    # --resume of a finished streamed run rebuilds the same checkpoint from the block states
    assert main(["distill", stories260k, str(tmp_path / "st"), "--streaming", "--resume", "--overwrite",
                 "--state-dir", str(tmp_path / "st.state"), *args]) == 0
    _same(tmp_path / "mem", tmp_path / "st")


@pytest.mark.parametrize("extra,msg", [
    (["--blockwise-steps", "2", "--steps", "5"], "end-to-end stage (--steps 5) needs the whole model"),
    (["--steps", "5"], "--streaming streams the block-wise stage"),
    (["--blockwise-steps", "2", "--steps", "0", "--data", "tinystories"], "evaluation dataset"),
])
def test_refusals(stories260k, tmp_path, capsys, extra, msg):
    assert main(["distill", stories260k, str(tmp_path / "o"), "--streaming", *extra]) == 2
    assert msg in _err(capsys)
    assert not (tmp_path / "o").exists()


def test_refuses_a_teacher_it_cannot_stream(shared, tmp_path, capsys):
    gguf = shared / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert main(["distill", str(gguf), str(tmp_path / "o"), "--streaming", *BLOCKS]) == 2
    assert "local safetensors model directory" in _err(capsys)


def test_refuses_an_evaluation_file(stories260k, data_dir, tmp_path, capsys):
    ev = data_dir / "tinystories" / "tinystories_val_sample.txt"
    assert main(["distill", stories260k, str(tmp_path / "o"), "--streaming", "--data", str(ev), *BLOCKS]) == 2
    assert "evaluation file" in _err(capsys)


def test_auto_streaming_refuses_an_end_to_end_stage(stories260k, tmp_path, capsys, monkeypatch):
    from onebit.distill import streaming

    monkeypatch.setattr(streaming, "available_memory", lambda: 1024)
    assert main(["distill", stories260k, str(tmp_path / "o"), "--blockwise-steps", "2", "--steps", "5"]) == 2
    assert "does not fit in the available memory" in _err(capsys)
