"""compare: outputs written like the other files; the issue-17 columns (bits end to end, KLD and top-1
agreement, per-task zero-shot with standard errors, quantization RSS) measured as the modules that
own them measure them, on stories260K."""
from __future__ import annotations

import copy
import csv
import io
import math
import os

import pytest
import torch

from onebit import compare as C
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


def test_foldable_and_q1_specs():
    cfg = C.parse_method_spec("onebit-foldable")
    assert cfg.method == "onebit" and cfg.foldable is True
    assert C.parse_method_spec("onebit").foldable is False
    assert C.parse_method_spec("q1_0").method == "q1_0"
    with pytest.raises(C.OneBitError, match="'foldable' does not apply to method 'rtn'"):
        C.parse_method_spec("rtn-w4-foldable")


def test_markdown_shows_standard_errors_and_csv_keeps_them_apart():
    r = Row("m", 1.25, 0.5, 2.0, {"wikitext2": 30.0},
            {"kl_to_teacher": 0.5, "kl_to_teacher_se": 0.01, "top1_agreement": 61.0, "piqa": 55.0,
             "piqa_se": 5.0, "zeroshot_avg": None}, bits_end_to_end=3.5, peak_rss_mib=12.0)
    md = C.to_markdown([r])
    head, _, cells = md.splitlines()[:3]
    assert head == ("| method | bits/weight | bits/weight e2e | size MiB | ppl wikitext2 | KLD | top-1 % | PIQA "
                    "| avg of six | quant s | quant RSS rise MiB |")
    assert cells == "| m | 1.250 | 3.500 | 0.500 | 30 | 0.5000 ± 0.0100 | 61 | 55.0 ± 5.0 | n/a | 2.0 | 12 |"
    assert "| peak RSS MiB |" in C.to_markdown([r], isolate=True)
    got = list(csv.DictReader(io.StringIO(C.to_csv([r]))))[0]
    assert got["piqa"] == "55.0" and got["piqa_se"] == "5.0" and got["kl_to_teacher_se"] == "0.01"
    assert got["bits/weight e2e"] == "3.5" and got["zeroshot_avg"] == ""


def test_rss_sampler_sees_an_allocation():
    with C.RSSSampler(interval=0.005) as small:
        pass
    with C.RSSSampler(interval=0.005) as big:
        x = torch.ones(64 * 2 ** 20)  # 256 MiB, touched
        float(x[-1])
        del x
    assert small.peak_rise_mib is not None and small.peak_rise_mib < 64
    assert big.peak_rise_mib > 200


def test_columns_equal_the_modules_that_own_them(stories260k, data_dir, monkeypatch):
    """Every number in a row is what onebit.eval / the ledger give for the same quantized model."""
    from onebit.api import quantize
    from onebit.eval.data import load_text
    from onebit.eval.kld import kl_divergence
    from onebit.eval.perplexity import perplexity, tokenize_text
    from onebit.eval.zeroshot import evaluate
    from onebit.formats.checkpoint import save_checkpoint
    from onebit.models import load_model, load_tokenizer

    monkeypatch.setenv("ONEBIT_DATA", str(data_dir))
    specs = "fp,onebit-foldable,q1_0,rtn-w4"
    rows = C.run_compare(stories260k, C.parse_methods(specs), ["tinystories", "wikitext2"], seqlen=64,
                         max_windows=2, zeroshot_limit=2)
    by = {r.method: r for r in rows}
    assert list(by) == specs.split(",")
    teacher, tok = load_model(stories260k), load_tokenizer(stories260k)
    ids = {d: tokenize_text(tok, load_text(d)) for d in ("tinystories", "wikitext2")}
    fp = by["fp"]
    assert fp.bits_per_weight == 32 and fp.bits_end_to_end == 32 and fp.peak_rss_mib is None
    assert fp.extra["kl_to_teacher"] == 0 and fp.extra["top1_agreement"] == 100
    assert fp.ppl["tinystories"] == pytest.approx(perplexity(teacher, ids["tinystories"], 64, 2, progress=False).ppl)
    for label in ("onebit-foldable", "q1_0"):
        r = by[label]
        model = quantize(copy.deepcopy(teacher), C.parse_method_spec(label))   # deterministic: no calibration
        led = save_checkpoint(model, os.path.join(os.environ.get("TMPDIR", "/tmp"), f"onebit-test-{os.getpid()}"),
                              overwrite=True)
        assert r.bits_per_weight == pytest.approx(led.bits_per_linear_weight)
        assert r.bits_end_to_end == pytest.approx(led.bits_per_weight)
        assert 1 < r.bits_per_weight < 1.6 < r.bits_end_to_end  # fp embeddings count end to end
        kl = kl_divergence(teacher, model, ids["tinystories"], 64, 2)
        assert r.extra["kl_to_teacher"] == pytest.approx(kl.mean_kld, rel=1e-4)
        assert r.extra["kl_to_teacher_se"] == pytest.approx(kl.kld_stderr, rel=1e-3)
        assert r.extra["top1_agreement"] == pytest.approx(100 * kl.top1_agreement)
        assert r.extra["kl_to_teacher"] > 0.01 and r.extra["top1_agreement"] < 100
        # the first dataset's perplexity comes from the KL pass: it must be perplexity()'s
        assert r.ppl["tinystories"] == pytest.approx(perplexity(model, ids["tinystories"], 64, 2, progress=False).ppl,
                                                     rel=1e-4)
        assert r.ppl["wikitext2"] == pytest.approx(perplexity(model, ids["wikitext2"], 64, 2, progress=False).ppl,
                                                   rel=1e-4)
        assert r.peak_rss_mib is not None and r.peak_rss_mib >= 0
    zs = evaluate(teacher, tok, list(C.ZEROSHOT_COLUMNS), limit=2)
    for t in C.ZEROSHOT_COLUMNS:
        assert fp.extra[t] == pytest.approx(100 * zs[t].acc) and fp.extra[t + "_se"] == pytest.approx(100 * zs[t].acc_stderr)
    six = C.ZEROSHOT_COLUMNS[:6]
    assert fp.extra["zeroshot_avg"] == pytest.approx(sum(fp.extra[t] for t in six) / 6)
    assert fp.extra["zeroshot_avg_se"] == pytest.approx(math.sqrt(sum(fp.extra[t + "_se"] ** 2 for t in six)) / 6)
    assert by["rtn-w4"].bits_per_weight < by["rtn-w4"].bits_end_to_end < 32


def test_isolated_quantization_reports_the_child_peak_rss(stories260k, data_dir, monkeypatch):
    """--isolate: a child process quantizes and saves; its ru_maxrss (a whole torch process) is
    reported and the parent evaluates the saved checkpoint, which scores as the in-process model."""
    monkeypatch.setenv("ONEBIT_DATA", str(data_dir))
    kw = dict(seqlen=64, max_windows=2)
    iso = C.run_compare(stories260k, C.parse_methods("rtn-w4"), ["tinystories"], isolate=True, **kw)[0]
    inproc = C.run_compare(stories260k, C.parse_methods("rtn-w4"), ["tinystories"], **kw)[0]
    assert iso.peak_rss_mib > 100 > inproc.peak_rss_mib  # a process that imported torch vs the rise
    assert iso.bits_per_weight == inproc.bits_per_weight and iso.bits_end_to_end == inproc.bits_end_to_end
    assert iso.ppl["tinystories"] == pytest.approx(inproc.ppl["tinystories"], rel=1e-3)
    assert iso.extra["kl_to_teacher"] == pytest.approx(inproc.extra["kl_to_teacher"], rel=1e-2, abs=1e-5)


def test_isolated_failure_is_one_line(stories260k, data_dir, monkeypatch):
    monkeypatch.setenv("ONEBIT_DATA", str(data_dir))
    with pytest.raises(C.OneBitError, match=r"^method 'gptq-w4-g1024': .*larger than"):
        C.run_compare(stories260k, C.parse_methods("gptq-w4-g1024"), ["tinystories"], seqlen=64, max_windows=1,
                      calib_samples=2, calib_seqlen=16, isolate=True)
