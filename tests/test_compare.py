"""compare: outputs written like the other files."""
from __future__ import annotations

import os

from onebit.compare import Row, plot


def test_plot_written_with_the_umask_mode(tmp_path):
    rows = [Row("fp", 32.0, 1.0, 0.0, {"tinystories": 5.0}), Row("onebit", 1.1, 0.1, 1.0, {"tinystories": 9.0})]
    old = os.umask(0o022)
    try:
        plot(rows, tmp_path / "ppl_vs_bits.png")
    finally:
        os.umask(old)
    f = tmp_path / "ppl_vs_bits.png"
    assert f.read_bytes()[:4] == b"\x89PNG" and f.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["ppl_vs_bits.png"]
