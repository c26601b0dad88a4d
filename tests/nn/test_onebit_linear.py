import pytest
import torch

from onebit.nn import OneBitLinear, OneBitLinearTrain, sign_ste


@pytest.mark.parametrize("layernorm", [False, True])
@pytest.mark.parametrize("shape", [(64, 172), (172, 64), (33, 9)])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_forward_equals_training_form(shape, layernorm, bias):
    out_f, in_f = shape
    lin = torch.nn.Linear(in_f, out_f, bias=bias)
    train = OneBitLinearTrain.from_linear(lin, layernorm=layernorm)
    packed = train.to_packed(torch.float32)
    x = torch.randn(3, 5, in_f)
    ref = train(x)
    got = packed(x)
    assert torch.allclose(got, ref, rtol=1e-5, atol=1e-6 * float(ref.detach().abs().max()))


def test_fp16_scales_are_what_the_packed_layer_uses():
    lin = torch.nn.Linear(48, 24)
    train = OneBitLinearTrain.from_linear(lin)
    packed = train.to_packed(torch.float16)
    with torch.no_grad():
        train.g.copy_(train.g.half().float())
        train.h.copy_(train.h.half().float())
    x = torch.randn(4, 48)
    assert torch.allclose(packed(x), train(x), rtol=1e-5, atol=1e-6)


def test_svid_init_approximates_the_linear():
    torch.manual_seed(0)
    a, b = torch.rand(64) + 0.5, torch.rand(32) + 0.5
    lin = torch.nn.Linear(32, 64, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.outer(a, b) * torch.randn(64, 32).sign())
    x = torch.randn(8, 32)
    packed = OneBitLinearTrain.from_linear(lin).to_packed(torch.float32)
    assert torch.allclose(packed(x), lin(x), rtol=1e-3, atol=1e-3)


def test_to_train_roundtrip():
    lin = torch.nn.Linear(20, 12)
    packed = OneBitLinearTrain.from_linear(lin).to_packed(torch.float32)
    x = torch.randn(4, 20)
    assert torch.allclose(packed.to_train()(x), packed(x), rtol=1e-5, atol=1e-6)


def test_ste_gradient():
    w = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], requires_grad=True)
    y = sign_ste(w)
    assert y.tolist() == [-1, -1, 1, 1, 1]
    y.backward(torch.arange(5.0))
    assert w.grad.tolist() == [0, 1, 2, 3, 4]
    w.grad = None
    sign_ste(w, clip=1.0).backward(torch.ones(5))
    assert w.grad.tolist() == [0, 1, 1, 1, 0]


def test_training_form_trains_g_h_and_latent():
    train = OneBitLinearTrain.from_linear(torch.nn.Linear(8, 4))
    train(torch.randn(2, 8)).sum().backward()
    assert train.weight.grad is not None and train.g.grad is not None and train.h.grad is not None


def test_packed_module_has_no_parameters():
    packed = OneBitLinear(16, 8)
    assert list(packed.parameters()) == []
    assert packed.weight_packed.dtype == torch.uint8 and packed.weight_packed.shape == (8, 2)


# ------------------------------------------------------------------ g/h/bias compute copies
def _packed_fp16(seed=0, in_f=40, out_f=24):
    torch.manual_seed(seed)
    return OneBitLinearTrain.from_linear(torch.nn.Linear(in_f, out_f)).to_packed(torch.float16)


def _expected(m, x):
    """The forward computed from the stored tensors as they are now (no cache)."""
    return m.dense_weight(torch.float32).matmul(x.unsqueeze(-1)).squeeze(-1) + m.bias.float()


def test_compute_copies_are_float32_cached_and_not_saved():
    m = _packed_fp16()
    x = torch.randn(3, 40)
    m(x)
    g1 = m.compute("g")
    assert g1.dtype == torch.float32 and m.compute("g") is g1           # cached: no per-call cast
    assert torch.equal(g1, m.g.float())
    assert m.g.dtype == torch.float16                                     # stored tensor unchanged
    assert set(m.state_dict()) == {"weight_packed", "g", "h", "bias"}
    assert m.state_dict()["h"].dtype == torch.float16


def test_compute_copies_follow_load_state_dict():
    m, other = _packed_fp16(0), _packed_fp16(1)
    x = torch.randn(3, 40)
    m(x)                                                                  # fills the cache
    m.load_state_dict(other.state_dict())
    assert torch.allclose(m(x), _expected(other, x), rtol=1e-4, atol=1e-4)
    assert torch.allclose(m(x), other(x))


def test_compute_copies_follow_in_place_changes_and_casts():
    m = _packed_fp16()
    x = torch.randn(3, 40)
    before = m(x)
    with torch.no_grad():
        m.h.mul_(2)                                                       # in place: version counter
        m.g[0] = 3.0
        m.bias.add_(1)
    assert torch.allclose(m(x), _expected(m, x), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(m(x), before)
    m.float()                                                             # cast: new storages
    assert m.g.dtype == torch.float32 and m.compute("g") is m.g
    assert torch.allclose(m(x), _expected(m, x), rtol=1e-4, atol=1e-4)
    m.half()                                                              # and back, h changed
    with torch.no_grad():
        m.h.fill_(0.5)
    assert torch.allclose(m(x.half()).float(), _expected(m, x), rtol=1e-2, atol=1e-2)


def test_compute_copies_under_inference_mode():
    m = _packed_fp16()
    x = torch.randn(2, 40)
    with torch.inference_mode():
        y1 = m(x)
        y2 = m(x)
    assert torch.equal(y1, y2) and torch.allclose(y1, _expected(m, x), rtol=1e-4, atol=1e-4)


def _packed(out_f=40, in_f=72, **kw):
    torch.manual_seed(0)
    return OneBitLinearTrain.from_linear(torch.nn.Linear(in_f, out_f, bias=kw.pop("bias", False)), **kw) \
        .to_packed(torch.float16)


def test_decode_fn_calls_the_kernel_directly_with_the_same_result():
    """OneBitLinear.decode_fn (generate.LlamaRuntime's path): the CPU kernel without the module call
    and the dispatcher, the forward's result exactly."""
    from onebit.kernels import dispatch

    m = _packed()
    fn = m.decode_fn()
    if dispatch.direct_kernel("binary_linear", "cpu") is None:
        assert fn is m  # no direct kernel registered: the module itself
        return
    assert fn is not m
    x = torch.randn(3, 72)
    with torch.inference_mode():
        assert torch.equal(fn(x), m(x))


def test_decode_fn_is_the_module_where_a_direct_call_would_differ(monkeypatch):
    """A bias, an output LayerNorm, a forward hook (a LoRA adapter), a subclass, the reference
    forced: decode_fn returns the module, so its forward (and the hooks) run."""
    from onebit.nn.lora import add_lora
    from onebit.nn.onebit_a8_linear import OneBitLinearA8

    assert _packed(bias=True).decode_fn().__class__ is OneBitLinear
    assert isinstance(_packed(layernorm=True).decode_fn(), OneBitLinear)
    m = _packed()
    add_lora(m, rank=2, alpha=4.0)
    assert m.decode_fn() is m
    m3 = _packed()
    m3.forward = lambda x: x.new_zeros(*x.shape[:-1], 40)  # bench/decode.py's stub
    assert m3.decode_fn() is m3
    a8 = OneBitLinearA8(72, 40)
    assert a8.decode_fn() is a8
    monkeypatch.setenv("ONEBIT_KERNEL", "reference")
    m2 = _packed()
    assert m2.decode_fn() is m2


def test_decode_fn_calls_are_visible_to_the_profiler():
    """Under torch.profiler a direct call is recorded as onebit::binary_linear (bench/decode.py's
    glue share counts it as compute)."""
    from torch.profiler import profile

    from onebit.kernels import dispatch

    if dispatch.direct_kernel("binary_linear", "cpu") is None:
        pytest.skip("no direct CPU kernel")
    fn = _packed().decode_fn()
    with torch.inference_mode(), profile() as prof:
        fn(torch.randn(2, 72))
    assert any(e.name == "onebit::binary_linear" for e in prof.events())
