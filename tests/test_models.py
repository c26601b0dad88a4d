"""shared_dir (onebit.paths, re-exported by models): where the real models and data are found."""
from __future__ import annotations

from onebit import models, paths
from onebit.eval.data import load_text
from onebit.models import resolve_demo_model, shared_dir


def test_shared_dir_found_from_any_directory(shared, tmp_path, monkeypatch):
    monkeypatch.delenv("ONEBIT_SHARED", raising=False)
    monkeypatch.delenv("ONEBIT_DATA", raising=False)
    monkeypatch.delenv("ONEBIT_DEMO_MODEL", raising=False)
    monkeypatch.chdir(tmp_path)  # no ../shared here
    assert shared_dir() == shared.resolve()
    assert load_text("tinystories").strip()
    assert resolve_demo_model() == str(shared.resolve() / "models" / "stories3M")


def test_shared_dir_env_first(shared, tmp_path, monkeypatch):
    alt = tmp_path / "alt"
    (alt / "data").mkdir(parents=True)
    monkeypatch.setenv("ONEBIT_SHARED", str(alt))
    assert shared_dir() == alt.resolve()


def test_shared_dir_absent(tmp_path, monkeypatch):
    monkeypatch.delenv("ONEBIT_SHARED", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(paths, "_repo_shared", lambda: tmp_path / "nowhere")
    assert shared_dir() is None
    assert resolve_demo_model() == models.DEMO_HUB_MODEL


def test_a_load_checks_the_format_version_once(fp_260k, tmp_path, monkeypatch):
    """One format-version check per load (onebit.load, checkpoint_ledger; from_pretrained when the
    transformers integration is registered), however many layers read the config."""
    import copy

    import onebit
    from onebit import config as config_mod
    from onebit import registry
    from onebit.formats import checkpoint as ckpt_mod

    model = onebit.quantize(copy.deepcopy(fp_260k), onebit.OneBitConfig(), progress=False)
    onebit.save(model, tmp_path / "ck")
    calls = []
    real = config_mod.check_format_version

    def counting(version):
        calls.append(version)
        return real(version)

    for mod in (config_mod, registry, ckpt_mod):
        monkeypatch.setattr(mod, "check_format_version", counting)
    onebit.load(tmp_path / "ck")
    assert len(calls) == 1, calls
    calls.clear()
    onebit.checkpoint_ledger(tmp_path / "ck")
    assert len(calls) == 1, calls
    from onebit.integrations import hf

    if hf._registered:
        from transformers import AutoModelForCausalLM

        calls.clear()
        AutoModelForCausalLM.from_pretrained(str(tmp_path / "ck"))
        assert len(calls) == 1, calls
