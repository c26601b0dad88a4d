"""``onebit info``: validates the checkpoint it summarises."""
import copy
import shutil
import subprocess
import sys

import onebit


def test_info_refuses_wrong_shape(fp_260k, tok_260k, stories260k, tmp_path):
    from safetensors.torch import load_file, save_file

    q = onebit.quantize(copy.deepcopy(fp_260k), onebit.OneBitConfig(), progress=False)
    good = tmp_path / "good"
    onebit.save(q, good, tokenizer=tok_260k, source=stories260k)
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    sd = load_file(bad / "model.safetensors")
    k = "model.layers.1.self_attn.q_proj.weight_packed"
    sd[k] = sd[k][:-1].contiguous()
    save_file(sd, bad / "model.safetensors", metadata={"format": "pt", "onebit_format_version": "1"})

    def info(p):
        r = subprocess.run([sys.executable, "-m", "onebit.cli.main", "info", str(p)],
                           capture_output=True, text=True, timeout=600)
        return r.returncode, r.stdout, r.stderr

    rc, so, se = info(good)
    assert rc == 0 and "bits/weight" in so, se
    rc, so, se = info(bad)
    assert rc == 2 and k in se and "shape" in se and "Traceback" not in se, se
    assert len(se.strip().splitlines()) == 1 and "bits/weight" not in so
