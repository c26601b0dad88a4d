"""The GGUF header reader: what `onebit info` and the truncation check rely on."""
from __future__ import annotations

import numpy as np
import pytest

from onebit.errors import OneBitError
from onebit.formats.gguf_header import check_gguf_file, read_gguf_header, summarize


def _write(path, tensors):
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_uint32("test.n", 7)
    w.add_array("test.list", [1, 2, 3])
    for name, arr in tensors.items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_reads_metadata_and_tensors(tmp_path):
    p = tmp_path / "m.gguf"
    _write(p, {"a": np.zeros((3, 4), np.float32), "b": np.ones(8, np.float16)})
    h = read_gguf_header(p, keep_arrays=True)
    assert h.metadata["test.n"] == 7 and h.metadata["test.list"] == [1, 2, 3]
    assert [(t.name, t.shape, t.type_name) for t in h.tensors] == [("a", (4, 3), "f32"), ("b", (8,), "f16")]
    assert h.needed_bytes <= p.stat().st_size
    assert "end to end" in summarize(h)


def test_truncated_and_foreign_files_are_one_line_errors(tmp_path):
    p = tmp_path / "m.gguf"
    _write(p, {"a": np.zeros((64, 64), np.float32)})
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(p.read_bytes()[: p.stat().st_size - 100])
    with pytest.raises(OneBitError, match="truncated"):
        check_gguf_file(cut)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file")
    with pytest.raises(OneBitError, match="not a GGUF"):
        check_gguf_file(junk)
    head = tmp_path / "head.gguf"
    head.write_bytes(p.read_bytes()[:40])
    with pytest.raises(OneBitError, match="truncated"):
        check_gguf_file(head)
