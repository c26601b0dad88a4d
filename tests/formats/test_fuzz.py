"""Fuzz the checkpoint readers with hypothesis: random bytes, truncations, header edits.

Whatever the bytes, reading raises our own CheckpointError (a OneBitError) or succeeds;
it never crashes with another exception type and never hangs (bounded examples, sizes
checked against the file before anything is allocated)."""
import json
import struct
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save

from onebit.errors import OneBitError
from onebit.formats.checkpoint import load_state_dict_file, read_quant_config, read_safetensors_header, weight_files
from onebit.formats.sharded import SafetensorsReader

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

VALID = save({"a.weight_packed": torch.randint(0, 255, (4, 3), dtype=torch.uint8),
                    "a.g": torch.randn(24).half(), "a.h": torch.randn(4).half(),
                    "emb": torch.randn(5, 6), "flag": torch.tensor([True, False])},
                   metadata={"format": "pt"})
_N = struct.unpack("<Q", VALID[:8])[0]
HEADER = json.loads(VALID[8:8 + _N])
DATA = VALID[8 + _N:]

_DIR = Path(tempfile.mkdtemp(prefix="onebit-fuzz-"))


def read_all(raw: bytes) -> None:
    """Every reader on one file; only OneBitError may escape."""
    f = _DIR / "model.safetensors"
    f.write_bytes(raw)
    sd = None
    try:
        sd = load_state_dict_file(f)  # header check, then safetensors' own reader
    except OneBitError:
        pass
    try:  # the streaming reader on its own (it relies on the header check alone)
        r = SafetensorsReader(f)
    except OneBitError:
        return
    try:
        for k in r.names():
            t = r.read(k)
            # both readers agree on what is valid, bit for bit (a flipped byte may make a NaN)
            assert sd is not None and t.dtype == sd[k].dtype and t.shape == sd[k].shape
            assert torch.equal(t.contiguous().reshape(-1).view(torch.uint8),
                               sd[k].contiguous().reshape(-1).view(torch.uint8))
    finally:
        r.close()


def test_valid_file_reads():
    read_all(VALID)
    assert set(load_state_dict_file(_DIR / "model.safetensors")) == set(HEADER) - {"__metadata__"}


@SETTINGS
@given(st.binary(max_size=600))
def test_random_bytes(raw):
    read_all(raw)


@SETTINGS
@given(st.integers(min_value=0, max_value=len(VALID) - 1))
def test_truncations(n):
    f = _DIR / "model.safetensors"
    f.write_bytes(VALID[:n])
    with pytest.raises(OneBitError):
        read_safetensors_header(f)


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_byte_flips(flips):
    raw = bytearray(VALID)
    for pos, val in flips:
        raw[pos] = val
    read_all(bytes(raw))


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                    | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                    max_leaves=12)
FIELD = st.sampled_from(["dtype", "shape", "data_offsets"])


@SETTINGS
@given(st.sampled_from(sorted(HEADER)), FIELD, JSON | st.lists(st.integers(-5, 10**12), max_size=4),
       st.booleans())
def test_header_edits(tensor, field, value, fix_length):
    header = json.loads(json.dumps(HEADER))
    if tensor == "__metadata__":
        header[tensor] = value
    else:
        header[tensor][field] = value
    hb = json.dumps(header).encode()
    n = len(hb) if fix_length else _N
    read_all(struct.pack("<Q", n) + hb + DATA)


@SETTINGS
@given(st.integers(0, 2**64 - 1))
def test_header_length_lies(n):
    read_all(struct.pack("<Q", n) + VALID[8:])


@SETTINGS
@given(JSON)
def test_config_and_index_json(value):
    """config.json / quantization_config / the shard index: arbitrary JSON gives our error."""
    d = _DIR / "ck"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": value}))
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": value}))
    for fn in (read_quant_config, weight_files):
        try:
            fn(d)
        except OneBitError:
            pass
    try:
        from onebit.registry import config_from_dict

        config_from_dict(value if not isinstance(value, dict) else {**value, "format_version": 1,
                                                                    "method": "onebit"})
    except OneBitError:
        pass
