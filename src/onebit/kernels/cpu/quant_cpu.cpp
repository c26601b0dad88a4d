// CPU kernels for the block-scaled packed formats (quant_cpu.cpp: drivers, portable kernels,
// registration; quant_cpu_simd.cpp: AVX2 / AVX-512; quant_cpu.h: shared; built with onebit_cpu.cpp into one extension by
// onebit.kernels.cpu.loader; registered with the dispatcher as torch.ops.onebit_cpu_quant.*):
//
//   quant_linear:      y = x · Ŵᵀ, Ŵ = (q - zero) ⊙ scale from n-bit codes (bits 2, 4, 8) packed
//                      LSB first (formats.packing.pack(q, bits)); scale [1,1] / [out,1] /
//                      [out, ceil(in/group)], zero of the same shape (uint8 or float) or none
//                      (symmetric: zero 2**(bits-1)).
//   block_sign_linear: y = x · Ŵᵀ, Ŵ = sign ⊙ scale[row, col // group] from 1 sign bit per weight
//                      (pack_signs: bit 1 -> +1, 0 -> -1), scales [out, ceil(in/group)] (Q1_0).
//
// Rounding follows the pure-torch reference (kernels/reference.py) for every activation dtype T:
// each weight is rnd_T(rnd_T(q - rnd_T(zero)) * rnd_T(scale)) (block sign: ±rnd_T(scale), exact),
// the dot product is accumulated in fp32 and the result rounded to T once.
//
// Paths (one build for any x86-64; ISA chosen at run time, function-level target attributes):
//   * small batch (M < mm_threshold): a GEMV over the packed rows, codes decoded in registers,
//     up to 8 x rows share every decoded weight vector, threads over output rows.
//       AVX-512: 32 weights per step.  2/4-bit: a 16-entry table of the group's exact weight
//                values, indexed by the codes with vpermps (x is stored permuted so that the
//                even/odd codes of a byte meet their x); 8-bit: vpmovzxbd + cvt + sub + mul +
//                rounding to T; 1-bit: the bit moved to the sign position (vpsllvd) and xored
//                into -scale (vpternlogd).
//       AVX2:    8 weights per step, codes shifted out of a broadcast word (vpsrlvd), converted
//                and scaled (the same formula), natural x order.
//       scalar:  portable, one weight at a time (8 partial sums).
//     The SIMD paths need groups of a multiple of 32 columns (or one group per row); other group
//     sizes take the scalar path.
//   * large batch (M >= mm_threshold): dequantize blocks of rows to T and call at::mm (BLAS).
//   * ONEBIT_CPU_ALGO=i8 (opt-in, not exact), small batch, AVX512-VNNI, symmetric 4/8-bit codes
//     with fp16 scales: int8 activations and integer dot products (quant_cpu_vnni.cpp).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "quant_cpu.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace onebit_quant {
namespace {

int64_t q_best_isa() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("bmi2"))
    return QISA_AVX512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return QISA_AVX2;
#endif
  return QISA_SCALAR;
}


// ---------------------------------------------------------------------------------- scalar
template <int RT>
void rows_scalar(const QP& p, int64_t n0, int64_t n1, const float* x, int64_t M, int64_t ldx, float* y) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* w = p.W + n * p.KB;
    for (int64_t m = 0; m < M; ++m) {
      const float* xm = x + m * ldx;
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t g = 0; g < p.ng; ++g) {
        float z, s;
        group_params<RT>(p, n, g, z, s);
        const int64_t k1 = std::min(p.K, (g + 1) * p.G);
        for (int64_t k = g * p.G; k < k1; ++k) {
          const int q = code_at(w, k, p.bits);
          const float wv = p.bits == 1 ? (q ? s : -s) : wval<RT>(q, z, s);
          acc[k & 7] += wv * xm[k];
        }
      }
      y[m * p.N + n] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    }
  }
}

int rt_of(at::ScalarType dt) { return dt == at::kBFloat16 ? 1 : dt == at::kHalf ? 2 : 0; }

// dequantize rows [n0, n1) to T (row-major [n1-n0, K]) for the GEMM path
template <typename T, int RT>
void dequant_rows(const QP& p, int64_t n0, int64_t n1, T* out) {
  at::parallel_for(n0, n1, 8, [&](int64_t b, int64_t e) {
    float tbl[16];
    for (int64_t n = b; n < e; ++n) {
      const uint8_t* w = p.W + n * p.KB;
      T* o = out + (n - n0) * p.K;
      for (int64_t g = 0; g < p.ng; ++g) {
        float z, s;
        group_params<RT>(p, n, g, z, s);
        const int64_t k1 = std::min(p.K, (g + 1) * p.G);
        if (p.bits <= 4) {
          for (int q = 0; q < (1 << p.bits); ++q) tbl[q] = p.bits == 1 ? (q ? s : -s) : wval<RT>(q, z, s);
          for (int64_t k = g * p.G; k < k1; ++k) o[k] = static_cast<T>(tbl[code_at(w, k, p.bits)]);
        } else {
          for (int64_t k = g * p.G; k < k1; ++k) o[k] = static_cast<T>(wval<RT>(w[k], z, s));
        }
      }
    }
  });
}

int kind_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return P_F16;
    case at::kBFloat16: return P_BF16;
    case at::kByte: return P_U8;
    default: return P_F32;
  }
}

at::Tensor as_param(const at::Tensor& t) {  // contiguous, in a dtype ld() reads
  const auto dt = t.scalar_type();
  const bool ok = dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kByte;
  return (ok ? t : t.to(at::kFloat)).contiguous();
}

at::Tensor run(const at::Tensor& x, const at::Tensor& packed_in, const at::Tensor& scale_in,
               const std::optional<at::Tensor>& zero_in, int64_t bits, int64_t group_size, int64_t K,
               int64_t isa, int64_t mm_threshold, int64_t algo, const char* op) {
  TORCH_CHECK(x.device().is_cpu() && packed_in.device().is_cpu(), op, ": CPU tensors expected");
  TORCH_CHECK(packed_in.scalar_type() == at::kByte && packed_in.dim() == 2, op, ": packed must be a 2-D uint8 tensor");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == K, op, ": x.shape[-1] must equal in_features");
  TORCH_CHECK(bits == 1 || bits == 2 || bits == 4 || bits == 8, op, ": bits must be 1, 2, 4 or 8");
  TORCH_CHECK(packed_in.size(1) * 8 >= K * bits, op, ": packed has too few columns for in_features");
  const at::ScalarType dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, op, ": x must be float32, bfloat16 or float16");
  const at::Tensor packed = packed_in.contiguous();
  const int64_t N = packed.size(0);
  const at::Tensor scale = as_param(scale_in.dim() == 2 ? scale_in : scale_in.reshape({-1, 1}));
  const int64_t ng = scale.size(1);
  TORCH_CHECK(scale.size(0) == N || scale.size(0) == 1, op, ": scale must have out_features or 1 rows");
  TORCH_CHECK(ng == 1 || (group_size > 0 && ng == (K + group_size - 1) / group_size), op,
              ": scale must have 1 or ceil(in_features / group_size) columns");
  at::Tensor zero;
  if (zero_in.has_value() && zero_in->defined()) {
    zero = as_param(zero_in->dim() == 2 ? *zero_in : zero_in->reshape({-1, 1}));
    TORCH_CHECK(zero.size(1) == ng && (zero.size(0) == N || zero.size(0) == 1), op, ": zero must have scale's shape");
  }
  QP p;
  p.W = packed.data_ptr<uint8_t>();
  p.KB = packed.size(1);
  p.K = K;
  p.Kp = (K + 31) / 32 * 32;
  p.N = N;
  p.bits = int(bits);
  p.ng = ng;
  p.G = ng == 1 ? std::max<int64_t>(K, 1) : group_size;
  p.s = scale.data_ptr();
  p.sk = kind_of(scale);
  p.s_rs = scale.size(0) == 1 ? 0 : ng;
  p.z = zero.defined() ? zero.data_ptr() : nullptr;
  p.zk = zero.defined() ? kind_of(zero) : P_F32;
  p.z_rs = zero.defined() && zero.size(0) > 1 ? ng : 0;
  p.zsym = float(1 << (bits - 1));
  p.zbuf = p.sbuf = nullptr;

  at::Tensor x2 = x.reshape({-1, K});
  const int64_t M = x2.size(0);
  std::vector<int64_t> oshape(x.sizes().begin(), x.sizes().end());
  oshape.back() = N;
  if (M == 0 || N == 0) return at::empty({M, N}, x.options()).view(oshape);
  const int rt = rt_of(dt);

  int64_t use = isa < 0 || isa > q_best_isa() ? q_best_isa() : isa;
  if (ng > 1 && group_size % 32 != 0) use = QISA_SCALAR;  // SIMD chunks must not cross groups
  // int8 activations (opt-in, not exact): the VNNI GEMV of quant_cpu_vnni.cpp
  if (algo == QALGO_I8 && M < mm_threshold && use == QISA_AVX512 && i8_vnni_available() && i8_fits(p)) {
    const at::Tensor xf = x2.to(at::kFloat).contiguous();
    at::Tensor y = at::empty({M, N}, x.options().dtype(at::kFloat));
    gemv_i8_vnni(p, xf.data_ptr<float>(), M, K, y.data_ptr<float>());
    return y.to(dt).view(oshape);
  }
  const bool perm = use == QISA_AVX512 && (bits == 2 || bits == 4);
  // x in fp32, zero padded to Kp columns; permuted for AVX-512 2/4-bit (perm_col)
  const at::Tensor xf = x2.to(at::kFloat);
  auto prologue = [&](float* xp, int64_t ldx) {
    const float* src = xf.data_ptr<float>();
    const int64_t s0 = xf.stride(0), s1 = xf.stride(1);
    int pc[32];
    for (int j = 0; j < 32; ++j) pc[j] = perm_col(int(bits), j);
    at::parallel_for(0, M, 16, [&](int64_t b, int64_t e) {
      for (int64_t m = b; m < e; ++m) {
        float* o = xp + m * ldx;
        const float* r = src + m * s0;
        for (int64_t k0 = 0; k0 < K; k0 += 32)
          for (int j = 0; j < 32; ++j) {
            const int64_t c = k0 + (perm ? pc[j] : j);
            o[k0 + j] = c < K ? r[c * s1] : 0.f;
          }
      }
    });
  };

  if (M >= mm_threshold) {  // batched: dequantize blocks of rows to T, BLAS GEMM per block
    // AVX-512: rows decoded by the GEMV's code (stored, not multiplied), in its column order, so
    // x is permuted the same way; otherwise the portable dequantization in natural order
    const bool simd = use == QISA_AVX512;
    const int64_t KW = simd ? p.Kp : K;
    at::Tensor xg = x2;
    if (simd) {
      at::Tensor xs = at::empty({M, KW}, x.options().dtype(at::kFloat));
      prologue(xs.data_ptr<float>(), KW);
      xg = xs.to(dt);
    }
    // blocks of ~1 MiB of dequantized rows: written and read back by the GEMM while still in L2
    const int64_t es = x.element_size();
    const int64_t NB = std::max<int64_t>(16, (int64_t(1) << 20) / std::max<int64_t>(KW * es, 1) / 16 * 16);
    at::Tensor y = at::empty({M, N}, x.options());
    at::Tensor wbuf = at::empty({std::min(NB, N), KW}, x.options());
    for (int64_t n0 = 0; n0 < N; n0 += NB) {
      const int64_t n1 = std::min(N, n0 + NB);
      if (simd) {
        RowsFn fn = pick_dequant512(rt, int(bits));
        char* base = static_cast<char*>(wbuf.data_ptr());
        at::parallel_for(n0, n1, 16, [&](int64_t b, int64_t e) {
          QP pt = p;
          std::vector<float> zs(2 * (ng + 16));
          pt.zbuf = zs.data();
          pt.sbuf = zs.data() + ng + 16;
          fn(pt, b, e, nullptr, KW, reinterpret_cast<float*>(base + (b - n0) * KW * es));
        });
      } else {
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dt, "onebit_quant_dequant", [&] {
          scalar_t* o = wbuf.data_ptr<scalar_t>();
          if (rt == 1) dequant_rows<scalar_t, 1>(p, n0, n1, o);
          else if (rt == 2) dequant_rows<scalar_t, 2>(p, n0, n1, o);
          else dequant_rows<scalar_t, 0>(p, n0, n1, o);
        });
      }
      at::Tensor wb = wbuf.narrow(0, 0, n1 - n0);
      if (n0 == 0 && n1 == N) return at::mm(xg, wb.t()).view(oshape);
      y.narrow(1, n0, n1 - n0).copy_(at::mm(xg, wb.t()));
    }
    return y.view(oshape);
  }

  const int64_t ldx = p.Kp, Mp = (M + 7) / 8 * 8;  // GEMV: whole blocks of 8 x rows (zeros)
  at::Tensor xs = at::zeros({Mp, ldx}, x.options().dtype(at::kFloat));
  float* xp = xs.data_ptr<float>();
  prologue(xp, ldx);
  at::Tensor acc = at::empty({Mp, N}, x.options().dtype(at::kFloat));
  float* ap = acc.data_ptr<float>();
  // one fp32 x row, 8-bit codes: the GEMV with the scale out of the sum (quant_cpu_gemv8.cpp)
  const bool g8 = M == 1 && rt == 0 && use != QISA_SCALAR && gemv8_fits(p, use);
  const int64_t grain = std::max<int64_t>(1, std::min<int64_t>(64, N / (4 * at::get_num_threads()) + 1));
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    QP pt = p;  // this thread's copy, with its own parameter buffers
    std::vector<float> zs(2 * (ng + 16));
    pt.zbuf = zs.data();
    pt.sbuf = zs.data() + ng + 16;
    // rows in slices of 16, so that a slice of packed rows stays in L1 while every x block uses it
    if (g8) return gemv8_rows(pt, use, n0, n1, xp, ap);
    for (int64_t r0 = n0; r0 < n1; r0 += 16) {
      const int64_t r1 = std::min(n1, r0 + 16);
      for (int64_t m0 = 0; m0 < M; m0 += 8) {
        const int64_t left = M - m0;
        const int mb = left == 1 ? 1 : left <= 4 ? 4 : 8;
        const float* xm = xp + m0 * ldx;
        float* ym = ap + m0 * N;
        if (use == QISA_SCALAR) {
          if (rt == 1) rows_scalar<1>(pt, r0, r1, xm, std::min<int64_t>(left, 8), ldx, ym);
          else if (rt == 2) rows_scalar<2>(pt, r0, r1, xm, std::min<int64_t>(left, 8), ldx, ym);
          else rows_scalar<0>(pt, r0, r1, xm, std::min<int64_t>(left, 8), ldx, ym);
        } else {
          RowsFn fn = pick_rows(use, rt, int(bits), mb);
          fn(pt, r0, r1, xm, ldx, ym);
        }
      }
    }
  });
  return acc.narrow(0, 0, M).to(dt).view(oshape);
}

at::Tensor quant_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                        const std::optional<at::Tensor>& zero, int64_t bits, int64_t group_size,
                        int64_t in_features, int64_t isa, int64_t mm_threshold, int64_t algo) {
  TORCH_CHECK(bits == 2 || bits == 4 || bits == 8, "quant_linear: bits must be 2, 4 or 8");
  return run(x, packed, scale, zero, bits, group_size, in_features, isa, mm_threshold, algo, "quant_linear");
}

at::Tensor block_sign_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales,
                             int64_t group_size, int64_t in_features, int64_t isa, int64_t mm_threshold) {
  return run(x, packed, scales, std::nullopt, 1, group_size, in_features, isa, mm_threshold, 0,
             "block_sign_linear");
}

}  // namespace
}  // namespace onebit_quant

using onebit_quant::block_sign_linear;
using onebit_quant::q_best_isa;
using onebit_quant::quant_linear;

TORCH_LIBRARY_FRAGMENT(onebit_cpu_quant, m) {
  m.def("best_isa() -> int", &q_best_isa);
  m.def("has_vnni() -> bool", &onebit_quant::i8_vnni_available);
  m.def("quant_linear(Tensor x, Tensor packed, Tensor scale, Tensor? zero, int bits, int group_size, "
        "int in_features, int isa, int mm_threshold, int algo=0) -> Tensor",
        &quant_linear);
  m.def("block_sign_linear(Tensor x, Tensor packed, Tensor scales, int group_size, int in_features, "
        "int isa, int mm_threshold) -> Tensor",
        &block_sign_linear);
}
