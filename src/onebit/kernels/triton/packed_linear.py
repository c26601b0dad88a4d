"""Triton kernels for the packed ops (CUDA; tested on CPU with ``TRITON_INTERPRET=1``).

One tiled kernel, two launch shapes:

* decode (rows M <= 16): BLOCK_M = 16, narrow BLOCK_N, **split-K** over the grid's second axis
  so that a GEMV launches enough programs to fill the GPU; partial fp32 sums go to a
  ``[SPLIT_K, M, N]`` workspace that one reduction adds up;
* prefill (M > 16): a classic tiled GEMM (64x64x64 tiles, no split).

Each program loads the packed bytes of its ``[BLOCK_N, BLOCK_K]`` weight tile, turns bits (or
2-bit codes) into ±1 / {-1,0,1} **in registers**, multiplies with the ``x ⊙ g`` tile (g fused
into the x load) with ``tl.dot`` (fp32 accumulation; ``ieee`` precision for fp32 inputs, so no
TF32) and applies ``h``/``scale`` in the epilogue.  Rounding follows the reference: ``x*g``, the
matmul result and ``*h`` are each rounded to the input dtype.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..dispatch import forced_reference
from ..reference import binary_linear_ref, ternary_linear_ref


@triton.jit
def _to(v, dtype: tl.constexpr, BF16_FIX: tl.constexpr):
    """fp32 -> dtype with round-to-nearest-even.  Under the interpreter fp32 -> bf16 truncates
    (triton 3.9), so there (BF16_FIX) the rounding is done on the bits first."""
    if BF16_FIX:
        b = v.to(tl.uint32, bitcast=True)
        b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
        v = b.to(tl.float32, bitcast=True)
    return v.to(dtype)


@triton.jit
def _packed_linear_kernel(x_ptr, w_ptr, g_ptr, h_ptr, y_ptr, M, N, K, KB,
                          sxm, sxk, swn, sh, sys_, sym,
                          BITS: tl.constexpr, HAS_G: tl.constexpr, SPLIT: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                          FP32: tl.constexpr, BF16_FIX: tl.constexpr):
    pid_mn = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_n = (N + BLOCK_N - 1) // BLOCK_N
    pid_m = pid_mn // num_n
    pid_n = pid_mn % num_n
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    per: tl.constexpr = 8 // BITS
    cmask: tl.constexpr = (1 << BITS) - 1
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)  # (tl.zeros is a @jit helper the
    # interpreter cannot call when triton was imported before TRITON_INTERPRET was set)
    k_per_split = (((K + BLOCK_K - 1) // BLOCK_K + SPLIT - 1) // SPLIT) * BLOCK_K
    k_lo = pid_k * k_per_split
    for k0 in range(k_lo, k_lo + k_per_split, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        kmask = offs_k < K
        xt = tl.load(x_ptr + offs_m[:, None] * sxm + offs_k[None, :] * sxk,
                     mask=(offs_m[:, None] < M) & kmask[None, :], other=0.0)
        if HAS_G:
            gk = _to(tl.load(g_ptr + offs_k, mask=kmask, other=0.0).to(tl.float32), xt.dtype, BF16_FIX)
            xt = _to(xt.to(tl.float32) * gk.to(tl.float32)[None, :], xt.dtype, BF16_FIX)
        # weight tile [BLOCK_K, BLOCK_N]: byte k // per of row n, code (k % per) * BITS
        byte = tl.load(w_ptr + offs_n[None, :] * swn + (offs_k // per)[:, None],
                       mask=(offs_n[None, :] < N) & kmask[:, None], other=0)
        code = (byte.to(tl.int32) >> ((offs_k % per) * BITS)[:, None]) & cmask
        # int -> fp32 -> dtype (the interpreter mis-converts int32 -> bf16 directly)
        if BITS == 1:
            wt = (code * 2 - 1).to(tl.float32)
        else:
            wt = (code - 1).to(tl.float32)
        wt = tl.where(kmask[:, None], wt, 0.0).to(xt.dtype)
        if FP32:
            acc += tl.dot(xt.to(tl.float32), wt.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(xt, wt)
    out_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if SPLIT == 1:
        ty: tl.constexpr = y_ptr.dtype.element_ty
        hv = _to(tl.load(h_ptr + offs_n * sh, mask=offs_n < N, other=0.0).to(tl.float32), ty, BF16_FIX)
        yv = _to(acc, ty, BF16_FIX).to(tl.float32) * hv.to(tl.float32)[None, :]
        tl.store(y_ptr + offs_m[:, None] * sym + offs_n[None, :], _to(yv, ty, BF16_FIX),
                 mask=out_mask)
    else:
        tl.store(y_ptr + pid_k * sys_ + offs_m[:, None] * sym + offs_n[None, :], acc, mask=out_mask)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _config(M: int, N: int, K: int, device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K) for a launch."""
    if M <= 16:  # decode: GEMV-like, split K until there are enough programs
        bn, bk = 32, 128
        progs = triton.cdiv(N, bn)
        target = 4 * (torch.cuda.get_device_properties(device).multi_processor_count
                      if device.type == "cuda" else 1)
        split = 1
        while progs * split < target and split * 2 * bk <= K:
            split *= 2
        return 16, bn, bk, split
    return 64, 64, 64, 1


def _launch(x, packed, g, post, in_features, bits, config=None):
    K = in_features
    x2 = x.reshape(-1, K)
    M, N, KB = x2.shape[0], packed.shape[0], packed.shape[1]
    packed = packed.contiguous()
    dt = x.dtype
    bm, bn, bk, split = config or _config(M, N, K, x.device)
    post = post.reshape(-1)
    sh = 0 if post.numel() == 1 else post.stride(0)
    grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn), split)
    # fp32 dot in ieee precision (no TF32); bf16 also takes the fp32 dot under the interpreter,
    # whose bf16 tl.dot is broken (triton 3.9).  The tiles hold bf16 values either way.
    fp32_dot = dt == torch.float32 or (dt == torch.bfloat16 and _interpreting())
    common = dict(BITS=bits, HAS_G=g is not None, SPLIT=split, BLOCK_M=bm, BLOCK_N=bn,
                  BLOCK_K=bk, FP32=fp32_dot, BF16_FIX=dt == torch.bfloat16 and _interpreting())
    gp = g if g is not None else post
    if split == 1:
        y = torch.empty(M, N, dtype=dt, device=x.device)
        _packed_linear_kernel[grid](x2, packed, gp, post, y, M, N, K, KB, x2.stride(0),
                                    x2.stride(1), packed.stride(0), sh, 0, N, **common)
    else:
        ws = torch.empty(split, M, N, dtype=torch.float32, device=x.device)
        _packed_linear_kernel[grid](x2, packed, gp, post, ws, M, N, K, KB, x2.stride(0),
                                    x2.stride(1), packed.stride(0), sh, M * N, N, **common)
        y = ws.sum(0).to(dt) * post.to(dt)
    return y.reshape(*x.shape[:-1], N)


def binary_linear_triton(x, packed, g, h, in_features, config=None):
    if forced_reference() or x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return binary_linear_ref(x, packed, g, h, in_features)
    return _launch(x, packed, g, h, in_features, 1, config)


def ternary_linear_triton(x, packed, scale, in_features, config=None):
    if forced_reference() or x.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return ternary_linear_ref(x, packed, scale, in_features)
    return _launch(x, packed, None, scale, in_features, 2, config)
