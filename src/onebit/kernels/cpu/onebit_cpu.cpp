// CPU kernels for the packed onebit ops (built on first use by onebit.kernels.cpu.loader).
//
//   binary_linear:  y = ((x ⊙ g) · sign(W)ᵀ) ⊙ h, sign(W) as bits (bit i of byte j = column 8j+i,
//                   1 -> +1, 0 -> -1, zero padding), uint8 [out, ceil(in/8)].
//   ternary_linear: y = (x · Qᵀ) ⊙ scale, codes q+1 packed 4 per byte, LSB first.
//
// Rounding follows the pure-torch reference (kernels/reference.py): for fp16/bf16 inputs the
// products x*g, the matmul result and the final *h are each rounded to the input dtype; the sum
// itself is accumulated in fp32.
//
// Paths (one build runs on any x86-64: ISA chosen at run time with __builtin_cpu_supports and
// function-level target attributes, no -march flag):
//   * small batch (M < mm_threshold): direct kernels over the packed bits, fp32 accumulation,
//     4 output rows per x load, threads over output rows (at::parallel_for = torch's OpenMP pool).
//       AVX512-BF16 (bf16/fp16 inputs): ±1 bf16 weights from the bits, x split into exact bf16
//                parts, vdpbf16ps (32 multiply-adds per instruction); see bin_bf16dp.
//       fxlut:   (algo=11, AVX-512 and AVX2; the default on CPUs other than Intel's, every dtype;
//                on AVX2 at every batch size) x per row in 24-bit fixed point, int32 tables per 4
//                columns (AVX-512) / 3 columns (AVX2, onebit_cpu_fixed_avx2.cpp) looked up by
//                vpermd over a cached transposed copy of the bits: exact integer sums, one
//                rounding per output.
//       fx:      (algo=10, AVX512-VNNI + VBMI) the same x as three int8 digit planes, vpdpbusd
//                against the 0/1 bytes of the bits (no extra memory) (onebit_cpu_fixed.cpp).
//       AVX-512: 32 bits broadcast to all lanes, vpsllvd moves bit i to the sign bit of lane i,
//                t = (-x) ^ (that & signbit) in one vpternlogd, acc += t (no mask registers).
//                algo=2: mask-register variant (kmov + masked xor); algo=3 (psum): one masked
//                add per 16 weights on centred x (2P - S).  Default for fp32: psum on Intel
//                (measured faster on the Xeon dev VM); elsewhere fxlut (shift: for measurements).
//       AVX2:    a 256-entry table of ±1 vectors indexed by the byte, acc = fma(x, table[b], acc),
//                two accumulators per row (the default on Intel: fastest exact AVX2 path measured
//                on the Xeon, before fxlut);
//                algo=8/9: exact sign flip of x by xor / vblendvps from vpsllvd'd bits, no table.
//       int8:    (algo=6, any ISA, not exact) x quantized per block of 128 to int8; AVX2: vpshufb
//                lookups of partial sums per 4 columns over a cached transposed copy (bin_i8_lut);
//                AVX512-VNNI: the bits mask q (vmovdqu8 {z}), vpdpbusd (bin_i8_vnni).
//       scalar:  the same table, one lane at a time (portable).
//       lut:     (algo=1, measured slower than the SIMD paths) T-MAC style: per x row, for every group of 8 activations
//                the 256 signed sums; each packed byte is then one table lookup.
//   * large batch (M >= mm_threshold): unpack a block of rows to ±1 in the input dtype and call
//     at::mm (MKL/oneDNN), i.e. the packed weight is expanded once per block, not per row.
//     AVX2 (default from AVX2_MM_THRESHOLD rows on Intel; never with fxlut): tiles expanded to ±1 fp32 with SIMD (512 KiB,
//     L2-sized, below 128 rows; up to 64 MiB above), one fp32 GEMM per tile written in place.
//     AVX-512 (default from AVX512_MM_THRESHOLD_F32 / _16 rows on Intel; with fxlut from
//     FX_MM_THRESHOLD_16 bf16 / fp16 rows, never for fp32): blocks of 1024 rows expanded to ±1
//     in the input dtype by masked blends, one GEMM per block (fp32: MKL in place; bf16: oneDNN, AMX
//     where the CPU has it).
//     mm_threshold < 0 = per-ISA default (AVX2: AVX2_MM_THRESHOLD; AVX-512: by dtype; ternary: by
//     dtype, TER_MM_THRESHOLD_*; scalar: never).
//
// Files: this one (pybind module, ISA detection and dispatch, prologue / epilogue),
// onebit_cpu.h (shared declarations, tables), onebit_cpu_portable.cpp (scalar / LUT kernels),
// onebit_cpu_avx2.cpp and onebit_cpu_avx512.cpp (the SIMD kernels), onebit_cpu_i8lut.cpp (the AVX2
// int8-activation table kernel), onebit_cpu_fixed.cpp / onebit_cpu_fixed_avx2.cpp (fixed-point x),
// onebit_cpu_gemm.cpp (the batched GEMM path).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "onebit_cpu.h"

namespace {

using namespace onebit_packed;

enum Isa : int64_t { ISA_SCALAR = 0, ISA_AVX2 = 1, ISA_AVX512 = 2 };
int64_t best_isa_raw();

// what the run-time dispatch asks of the CPU beyond the ISA level, probed once
struct CpuFeatures {
  bool bf16dp = false;   // AVX512-BF16 (with the AVX-512 level)
  bool vnni512 = false;  // AVX512-VNNI (with the AVX-512 level)
  bool fx = false;       // AVX512-VNNI + AVX512-VBMI: the fixed-point exact GEMV (algo=fx)
  bool intel = false;    // vendor: picks the AVX-512 GEMV (psum / bf16dp on Intel, fxlut elsewhere)
};

const CpuFeatures& cpu_features() {
  static const CpuFeatures f = [] {
    CpuFeatures r;
#if defined(__x86_64__)
    __builtin_cpu_init();
    const bool avx512 = best_isa_raw() == 2;
    r.bf16dp = avx512 && __builtin_cpu_supports("avx512bf16");
    r.vnni512 = avx512 && __builtin_cpu_supports("avx512vnni");
    r.fx = r.vnni512 && __builtin_cpu_supports("avx512vbmi");
    r.intel = __builtin_cpu_is("intel") != 0;
#endif
    return r;
  }();
  return f;
}

int64_t best_isa() { return best_isa_raw(); }

// the probed features, for tests and benchmarks
std::map<std::string, bool> cpu_flags() {
  const CpuFeatures& f = cpu_features();
  return {{"bf16dp", f.bf16dp}, {"vnni512", f.vnni512}, {"fx", f.fx}, {"intel", f.intel}};
}

int64_t best_isa_raw() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("bmi2"))
    return ISA_AVX512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return ISA_AVX2;
#endif
  return ISA_SCALAR;
}

// algo codes (kernels/dispatch.py _ALGO): 0 default, 1 lut, 2 kmask, 3 psum, 4 shift, 5 bf16dp,
// 6 i8 (int8 activations), 7 table (AVX2 ±1 table + FMA: the AVX2 default), 8 xor / 9 blend
// (AVX2 sign flip by xor / by vblendvps)
// 10 fx (exact: x in fixed point as int8 digit planes, AVX512-VNNI; onebit_cpu_fixed.cpp)
// 11 fxlut (exact: the same fixed-point x, int32 tables per 4 columns looked up by vpermd over the
// transposed bits, AVX-512; onebit_cpu_fixed.cpp)
constexpr int64_t ALGO_I8 = 6, ALGO_XOR = 8, ALGO_BLEND = 9, ALGO_FX = 10, ALGO_FXLUT = 11;
// mm_threshold < 0 (auto): batch rows from which AVX2 expands tiles and calls a GEMM (measured,
// docs/kernels.md); AVX-512 and ternary by dtype (below); scalar never does unless asked
constexpr int64_t AVX2_MM_THRESHOLD = 16, NEVER_MM = int64_t(1) << 40;
// AVX-512 (binary): from 32 fp32 rows / 8 bf16 or fp16 rows the GEMM path (±1 rows expanded by
// masked blends, then MKL / oneDNN: AVX-512 FMA for fp32, AMX for bf16) beats the direct kernel
// (bench/kernel_speed.py --batch 8 16 32 64 512, docs/kernels.md)
constexpr int64_t AVX512_MM_THRESHOLD_F32 = 32, AVX512_MM_THRESHOLD_16 = 8;
// with fxlut (AVX-512, off Intel): bf16 / fp16 from 256 rows to the GEMM path, fp32 never (below)
constexpr int64_t FX_MM_THRESHOLD_16 = 256;
// ternary (AVX2 and AVX-512): rows unpacked through the byte table, then BLAS, from 64 fp32 / 32
// bf16-fp16 rows (the table unpack is a fixed cost per call, so the direct kernel wins below;
// SmolLM2 ternary prefill 184 -> 494 tok/s, bench/smollm2_speed.py, docs/kernels.md)
constexpr int64_t TER_MM_THRESHOLD_F32 = 64, TER_MM_THRESHOLD_16 = 32;

int64_t resolve_isa(int64_t isa) {
  const int64_t best = best_isa();
  if (isa < 0 || isa > best) return best;
  return isa;
}

template <typename T>
inline float rnd(float v) {  // round to T like a torch op producing T would
  return static_cast<float>(static_cast<T>(v));
}

// xs[m, k] = round_T(x[m,k] * round_T(g[k])) as fp32, zero padded to ldx columns
template <typename T, typename G>
void prologue(const at::Tensor& x2, const G* g, int64_t K, float* xs, int64_t ldx) {
  const T* xp = x2.data_ptr<T>();
  const int64_t M = x2.size(0), s0 = x2.stride(0), s1 = x2.stride(1);
  at::parallel_for(0, M, 16, [&](int64_t b, int64_t e) {
    for (int64_t m = b; m < e; ++m) {
      float* o = xs + m * ldx;
      const T* xr = xp + m * s0;
      if (g != nullptr && s1 == 1) {  // contiguous rows: a loop the compiler vectorizes
        for (int64_t k = 0; k < K; ++k)
          o[k] = rnd<T>(static_cast<float>(xr[k]) * rnd<T>(static_cast<float>(g[k])));
      } else if (g != nullptr) {
        for (int64_t k = 0; k < K; ++k)
          o[k] = rnd<T>(static_cast<float>(xr[k * s1]) * rnd<T>(static_cast<float>(g[k])));
      } else {
        for (int64_t k = 0; k < K; ++k) o[k] = static_cast<float>(xr[k * s1]);
      }
      std::memset(o + K, 0, sizeof(float) * (ldx - K));
    }
  });
}

// y[m, n] = round_T(round_T(acc[m, n]) * round_T(h[n]))   (h has 1 or N entries)
template <typename T, typename H>
void epilogue(const float* acc, int64_t M, int64_t N, const H* h, int64_t hn, T* y) {
  std::vector<float> hv(N);  // h rounded to T once, not per output
  for (int64_t n = 0; n < N; ++n) hv[n] = rnd<T>(static_cast<float>(h[hn == 1 ? 0 : n]));
  at::parallel_for(0, M, 16, [&](int64_t b, int64_t e) {
    for (int64_t m = b; m < e; ++m)
      for (int64_t n = 0; n < N; ++n) y[m * N + n] = static_cast<T>(rnd<T>(acc[m * N + n]) * hv[n]);
  });
}

void check_args(const at::Tensor& x, const at::Tensor& packed, int64_t K, int64_t per,
                const char* op) {
  TORCH_CHECK(x.device().is_cpu() && packed.device().is_cpu(), op, ": CPU tensors expected");
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 2, op,
              ": packed must be a 2-D uint8 tensor");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == K, op, ": x.shape[-1] must equal in_features");
  TORCH_CHECK(packed.size(1) * per >= K, op, ": packed has too few columns for in_features");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16 ||
                  x.scalar_type() == at::kHalf,
              op, ": x must be float32, bfloat16 or float16");
}

// Threads over chunks of 16 output rows (at::parallel_for = torch's OpenMP pool); inside a
// thread, blocks of 64 weight rows x 8 x rows, so that a weight block stays in L1/L2 while every
// x row uses it (without this, each x row streams the whole weight matrix again).
template <typename F>
void blocked(int64_t M, int64_t N, int64_t KB, const F& f) {
  at::parallel_for(0, (N + 15) / 16, par_grain(16 * KB * M, 4), [&](int64_t b, int64_t e) {
    for (int64_t c0 = b; c0 < e; c0 += 4) {
      const int64_t r0 = 16 * c0, r1 = std::min(N, 16 * std::min(e, c0 + 4));
      for (int64_t m0 = 0; m0 < M; m0 += 8) f(m0, std::min<int64_t>(8, M - m0), r0, r1);
    }
  });
}

// shared driver for both ops; `pre` is g (binary) or undefined (ternary), `post` is h / scale
at::Tensor packed_linear(const at::Tensor& x, const at::Tensor& packed_in, const at::Tensor& pre,
                         const at::Tensor& post_in, int64_t K, bool ternary, int64_t isa,
                         int64_t mm_threshold, int64_t algo) {
  const int64_t per = ternary ? 4 : 8;
  check_args(x, packed_in, K, per, ternary ? "ternary_linear" : "binary_linear");
  const at::Tensor packed = packed_in.contiguous();
  const int64_t N = packed.size(0), KB = packed.size(1);
  const at::ScalarType dt = x.scalar_type();
  at::Tensor x2 = x.reshape({-1, K});
  const int64_t M = x2.size(0);
  std::vector<int64_t> oshape(x.sizes().begin(), x.sizes().end());
  oshape.back() = N;
  at::Tensor y = at::empty({M, N}, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (M == 0 || N == 0) return y.view(oshape);
  const at::Tensor g = pre.defined() ? pre.to(at::kFloat).contiguous() : at::Tensor();
  const at::Tensor post = post_in.to(at::kFloat).contiguous();
  TORCH_CHECK(post.numel() == N || post.numel() == 1, "h/scale must have out_features or 1 entries");
  TORCH_CHECK(!g.defined() || g.numel() == K, "g must have in_features entries");
  const int64_t ldx = per * KB + 32;
  at::Tensor xs = at::empty({M, ldx}, x.options().dtype(at::kFloat));
  at::Tensor acc = at::empty({M, N}, x.options().dtype(at::kFloat));
  const float* gp = g.defined() ? g.data_ptr<float>() : nullptr;
  // g is rounded to T after .to(float): fp16/fp32 g -> fp32 is exact, so rnd<T> matches g.to(T)

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dt, "onebit_prologue",
                                  [&] { prologue<scalar_t, float>(x2, gp, K, xs.data_ptr<float>(), ldx); });

  const uint8_t* W = packed.data_ptr<uint8_t>();
  const int64_t use = resolve_isa(isa);
  // default on AVX2 CPUs other than Intel's: the exact fixed-point table kernel (fxlut) at every
  // batch size, no GEMM path unless a threshold is given (Zen 4 capped at AVX2, 1 thread, cold:
  // 5632x2048 GEMV 0.45 -> 0.18 ms; 1.1-1.7x dense fp32 at 512 rows where the GEMM path was
  // 0.9-1.0x; bench/kernel_speed.py --isa avx2, docs/kernels.md).  Intel keeps the ±1 table + FMA
  // kernel and the GEMM path (fxlut is not measured there).
  // On AVX-512 (off Intel) too: fp32 at every batch size (Zen 4, 1 thread, 512 rows: 1.4-2.5x
  // dense where the GEMM path was 0.8-1.0x), bf16 / fp16 below FX_MM_THRESHOLD_16 rows (there the
  // bf16 GEMM path and fxlut tie: 0.8-0.9x and 0.6-1.1x dense at 512 rows; fxlut 0.9-1.3x at 64,
  // the GEMM 0.8-1.0x); bench/kernel_speed.py, docs/kernels.md.
  if (algo == 0 && !ternary && (use == ISA_AVX2 || use == ISA_AVX512) && !cpu_features().intel) algo = ALGO_FXLUT;
  const bool fx_all = !ternary && (use == ISA_AVX2 || use == ISA_AVX512) && algo == ALGO_FXLUT;
  if (mm_threshold < 0)
    mm_threshold = fx_all ? (use == ISA_AVX512 && dt != at::kFloat ? FX_MM_THRESHOLD_16 : NEVER_MM)
                   : ternary ? (use == ISA_SCALAR ? NEVER_MM : dt == at::kFloat ? TER_MM_THRESHOLD_F32 : TER_MM_THRESHOLD_16)
                   : use == ISA_AVX2 ? AVX2_MM_THRESHOLD
                   : use == ISA_AVX512 ? (dt == at::kFloat ? AVX512_MM_THRESHOLD_F32 : AVX512_MM_THRESHOLD_16)
                                       : NEVER_MM;
  // int8 activations on AVX2 (or AVX-512 without VNNI): the table kernel at every batch size (it
  // beats the exact GEMM path there too, bench/kernel_speed.py --isa avx2 --variant avx2-i8)
  const bool i8lut = !ternary && algo == ALGO_I8 && (use == ISA_AVX2 || (use == ISA_AVX512 && !cpu_features().vnni512));
  if (i8lut) {
    bin_i8_lut(quantize_x(xs.data_ptr<float>(), M, ldx, K, true), M, packed, acc.data_ptr<float>());
  } else if (M >= mm_threshold) {
    // batched: tiles / blocks of weight rows expanded to ±1 (or {-1,0,1}), one BLAS GEMM per tile
    // (onebit_cpu_gemm.cpp)
    if (!ternary && use == ISA_AVX2)
      gemm_avx2_f32(xs, K, W, N, KB, acc);
    else
      gemm_expanded(xs, K, W, N, KB, ternary, use == ISA_AVX512, dt, acc);
  } else {
    const float* xp = xs.data_ptr<float>();
    float* ap = acc.data_ptr<float>();
    // (algo was set to fxlut above on AVX-512 CPUs other than Intel's, for every dtype: Zen 4,
    // 5632x2048, 1 thread, cold: fp32 0.44 ms with shift, 0.28 with fx, 0.13 with fxlut;
    // bench/kernel_speed.py, docs/kernels.md.  Intel keeps psum / bf16dp: neither fixed-point
    // kernel is measured there.)
    // fp32 default on Intel: the masked-sum kernel (measured faster there than shift, with
    // prefetch: 1.18x llama.cpp TQ2_0 decode against 1.01x, docs/kernels.md); bf16 / fp16: the
    // bf16 dot products below (for fp32, 3 parts, only on request: algo=5)
    if (algo == 0 && !ternary && dt == at::kFloat && use == ISA_AVX512 && cpu_features().intel) algo = 3;
    // fixed-point x for fx / fxlut (rows with inf / nan: the fp32 kernels below)
    const bool want_fx = !ternary && algo == ALGO_FX && use == ISA_AVX512 && cpu_features().fx;
    const bool want_lut = fx_all;
    FixedX fx;
    if (want_fx || want_lut) fx = fixed_x(xp, M, ldx, K, want_fx, want_lut, use != ISA_SCALAR);
    const bool use_fx = want_fx && fx.finite, use_fxlut = want_lut && fx.finite;
    if (use_fxlut) {
      (use == ISA_AVX512 ? bin_fx_lut : bin_fx_lut_avx2)(fx, M, packed, ap);
    } else if (use_fx) {
      blocked(M, N, KB, [&](int64_t m0, int64_t mb, int64_t r0, int64_t r1) {
        bin_fx_vnni(fx, m0, mb, W, KB, r0, r1, ap + m0 * N, N);
      });
    } else if (!ternary && ((algo == 0 && dt != at::kFloat) || algo == 5) && use == ISA_AVX512 &&
               cpu_features().bf16dp) {
      // exact split of x (fp32 values already rounded as the reference) into bf16 parts
      const int np = dt == at::kBFloat16 ? 1 : dt == at::kHalf ? 2 : 3;
      const int64_t ldp = ((per * KB + 63) / 64) * 64 + 64;
      at::Tensor parts = at::zeros({np, M, ldp}, x.options().dtype(at::kBFloat16));
      auto* pp = reinterpret_cast<uint16_t*>(parts.data_ptr<at::BFloat16>());
      at::parallel_for(0, M, 16, [&](int64_t b, int64_t e) {
        for (int64_t m = b; m < e; ++m)
          for (int64_t k = 0; k < K; ++k) {
            float r = xp[m * ldx + k];
            for (int p = 0; p < np; ++p) {
              const c10::BFloat16 v(r);  // round to nearest even
              // position inside the 32-column block: column d -> word 2d, 16+d -> word 2d+1
              const int64_t c = k & 31, pos = (k & ~int64_t(31)) + (c < 16 ? 2 * c : 2 * (c - 16) + 1);
              pp[(p * M + m) * ldp + pos] = v.x;
              r -= static_cast<float>(v);
            }
          }
      });
      auto fn = np == 1 ? bin_bf16dp<1> : np == 2 ? bin_bf16dp<2> : bin_bf16dp<3>;
      blocked(M, N, KB, [&](int64_t m0, int64_t mb, int64_t r0, int64_t r1) {
        fn(pp + m0 * ldp, M * ldp, mb, ldp, W, KB, r0, r1, ap + m0 * N, N);
      });
    } else if (!ternary && algo == ALGO_I8) {
      const QuantX qx = quantize_x(xp, M, ldx, K, use != ISA_SCALAR);
      blocked(M, N, KB, [&](int64_t m0, int64_t mb, int64_t r0, int64_t r1) {
        if (use == ISA_SCALAR)
          bin_i8_scalar(qx, m0, mb, W, KB, r0, r1, ap + m0 * N, N);
        else
          bin_i8_vnni(qx, m0, mb, W, KB, r0, r1, ap + m0 * N, N);
      });
    } else if (!ternary && algo == 3 && use == ISA_AVX512) {
      // centred copy of x, its mean and its (tiny) sum, per row
      at::Tensor xc = at::empty({M, ldx}, x.options().dtype(at::kFloat));
      std::vector<float> cs(M), ss(M);
      float* xcp = xc.data_ptr<float>();
      for (int64_t m = 0; m < M; ++m) {
        const float* xr = xp + m * ldx;
        double sum = 0;
        for (int64_t k = 0; k < K; ++k) sum += xr[k];
        const float c = float(sum / double(K));
        double s2 = 0;
        float* o = xcp + m * ldx;
        for (int64_t k = 0; k < K; ++k) {
          o[k] = xr[k] - c;
          s2 += o[k];
        }
        std::memset(o + K, 0, sizeof(float) * (ldx - K));
        cs[m] = c;
        ss[m] = float(s2);
      }
      at::parallel_for(0, (N + 15) / 16, par_grain(16 * KB * M, 4), [&](int64_t b, int64_t e) {
        bin_avx512_psum(xcp, cs.data(), ss.data(), M, ldx, W, KB, K, 16 * b, std::min(N, 16 * e), ap, N);
      });
    } else if (!ternary && algo == 2 && use == ISA_AVX512) {
      at::parallel_for(0, (N + 15) / 16, par_grain(16 * KB * M, 4), [&](int64_t b, int64_t e) {
        bin_avx512(xp, M, ldx, W, KB, 16 * b, std::min(N, 16 * e), ap, N);
      });
    } else if (!ternary && algo == 1) {
      at::Tensor lut = at::empty({KB * 256}, x.options().dtype(at::kFloat));
      for (int64_t m = 0; m < M; ++m) {
        bin_build_lut(xp + m * ldx, KB, lut.data_ptr<float>());
        const float* lp = lut.data_ptr<float>();
        at::parallel_for(0, (N + 3) / 4, 16, [&](int64_t b, int64_t e) {
          bin_lut_rows(lp, W, KB, 4 * b, std::min(N, 4 * e), ap + m * N);
        });
      }
    } else {
      // AVX2 default: the ±1 table + FMA (measured fastest on the dev VM's Xeon, where vblendvps
      // ymm is 3 uops); xor / blend: the exact sign-flip variants, for measurements
      RowKernel avx2 = algo == ALGO_XOR ? bin_avx2_flip<false> : algo == ALGO_BLEND ? bin_avx2_flip<true>
                                                                                   : bin_avx2;
      RowKernel fn = ternary ? (use == ISA_AVX512 ? ter_avx512 : use == ISA_AVX2 ? ter_avx2 : ter_scalar)
                             : (use == ISA_AVX512 ? bin_avx512_shift : use == ISA_AVX2 ? avx2 : bin_scalar);
      blocked(M, N, KB, [&](int64_t m0, int64_t mb, int64_t r0, int64_t r1) {
        fn(xp + m0 * ldx, mb, ldx, W, KB, r0, r1, ap + m0 * N, N);
      });
    }
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dt, "onebit_epilogue", [&] {
    epilogue<scalar_t, float>(acc.data_ptr<float>(), M, N, post.data_ptr<float>(), post.numel(),
                              y.data_ptr<scalar_t>());
  });
  return y.view(oshape);
}

at::Tensor binary_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& g,
                         const at::Tensor& h, int64_t in_features, int64_t isa,
                         int64_t mm_threshold, int64_t algo) {
  return packed_linear(x, packed, g, h, in_features, false, isa, mm_threshold, algo);
}

at::Tensor ternary_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                          int64_t in_features, int64_t isa, int64_t mm_threshold) {
  return packed_linear(x, packed, at::Tensor(), scale, in_features, true, isa, mm_threshold, 0);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("best_isa", &best_isa, "best ISA this CPU runs: 0 scalar, 1 avx2, 2 avx512");
  m.def("cpu_flags", &cpu_flags, "what the dispatch probed: bf16dp, vnni512, fx (VNNI + VBMI), intel");
  m.def("binary_linear", &binary_linear, "packed 1-bit linear (x, packed, g, h, in, isa, mm_threshold, algo)");
  m.def("ternary_linear", &ternary_linear, "packed ternary linear (x, packed, scale, in, isa, mm_threshold)");
  m.def("decode_attention", &onebit_packed::decode_attention,
        "attention of one query position: (q [nh, D], kt [nkv, D, L], v [nkv, L, D], scale, isa), fp32, "
        "isa 2 (AVX-512) or 1 (AVX2)");
}
