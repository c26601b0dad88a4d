// Shared by the onebit_cpu*.cpp files (the packed binary / ternary linear ops): the ISA target
// attributes, the ±1 / ternary lookup tables, the int8 activation layout and the kernels each
// file defines.  onebit_cpu.cpp: pybind module, ISA dispatch, prologue / epilogue, GEMM path;
// onebit_cpu_portable.cpp: scalar and LUT kernels; onebit_cpu_avx2.cpp / onebit_cpu_avx512.cpp:
// the SIMD kernels (function-level target attributes, chosen at run time; no -march flag).
#pragma once

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#define AVX2_TARGET __attribute__((target("avx2,fma")))
#define AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,bmi2,fma")))
#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,bmi2,fma")))
#define VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,bmi2,fma")))
#define FX_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx512vbmi,bmi2,fma")))

namespace onebit_packed {

// ----------------------------------------------------------------------------------------------
// lookup tables: ±1 per bit (binary) and {-1, 0, 1, 2} per 2-bit code (ternary, code = q + 1)
struct Tables {
  alignas(64) float bin[256][8];
  alignas(64) float ter[256][4];
  Tables() {
    for (int b = 0; b < 256; ++b) {
      for (int i = 0; i < 8; ++i) bin[b][i] = ((b >> i) & 1) ? 1.0f : -1.0f;
      for (int i = 0; i < 4; ++i) ter[b][i] = float(((b >> (2 * i)) & 3)) - 1.0f;
    }
  }
};
inline const Tables& tables() {  // one table for every file
  static const Tables t;
  return t;
}

// Software prefetch of the packed rows a GEMV reads next: each kernel, working on 4 rows, touches
// the same 64-byte line of the 4 rows PREFETCH_ROWS below once per 64 bytes it reads.  With the
// weights coming from DRAM once per token the GEMVs were latency-bound without it (5632x2048,
// 1 thread, cold weights: i8 0.28 -> 0.19 ms; bench/kernel_speed.py, docs/kernels.md).  The address is
// formed as an integer: past the last row it points outside the matrix, which a prefetch (a hint,
// never a fault) may do.
constexpr int64_t PREFETCH_ROWS = 8;
inline void prefetch_ahead(const uint8_t* const* w, int64_t KB, int64_t off) {
  for (int r = 0; r < 4; ++r)
    __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<uintptr_t>(w[r]) +
                                                     uintptr_t(PREFETCH_ROWS * KB + off)), 0, 3);
}

// Grain of a parallel loop over items of `work_bytes` each (packed weight bytes x x rows): at
// least `min_grain` items, and enough that one chunk holds ONEBIT_CPU_PAR_BYTES of work (default
// 16 KiB), so that a tiny layer (SmolLM2's 192x576 k/v projections at batch 1: 14 KiB) runs on the
// calling thread instead of waking the others for a µs of work each.  Swept on the idle 2-core Xeon
// at 2 threads (bench/small_layers.py, docs/kernels.md): 64 KiB made the exact 256x2048 GEMV slower
// (AVX2 15.6 -> 22.7 µs); 16 KiB is the split-everything timing within noise, and the AVX2 i8 192x576
// GEMV 5.3-5.6 -> 3.6-3.7 µs.  The variable is read once per process.
inline int64_t par_grain(int64_t work_bytes, int64_t min_grain) {
  static const int64_t par = [] {
    const char* e = std::getenv("ONEBIT_CPU_PAR_BYTES");
    return e ? std::max<int64_t>(1, std::atoll(e)) : int64_t(16) * 1024;
  }();
  const int64_t w = std::max<int64_t>(1, work_bytes);
  return std::max<int64_t>(min_grain, (par + w - 1) / w);
}

inline float hsum_scalar(const float* v, int n) {
  float s = 0.f;
  for (int i = 0; i < n; ++i) s += v[i];
  return s;
}

// All direct kernels compute, for output rows [n0, n1) and every x row m:
//   y[m*ldy + n] = sum_k coef(W[n], k) * x[m*ldx + k]
// x rows are fp32, zero padded up to ldx >= 8*KB + 32 (binary) / 4*KB + 32 (ternary).

using RowKernel = void (*)(const float*, int64_t, int64_t, const uint8_t*, int64_t, int64_t,
                           int64_t, float*, int64_t);

// ---------------------------------------------------------------- binary: int8 activations
// (algo=i8, not exact).  x (after x*g, rounded as the reference) is quantized per block of
// QB = 128 columns, with block scales that are integer multiples of one scale per row:
//   a_b = max|x_b| / 127,  S = max_b a_b / 255,  u_b = min(255, ceil(a_b / S)) (0 where a_b = 0),
//   s_b = S u_b (>= a_b, so |x_b / s_b| <= 127),  q = round_half_even(x / s_b) in [-127, 127].
// A block holds at least 7 bits unless its max is under 1/255 of the row's largest block max
// (then its step is S: a block that small adds little to the dot product).  With P_b = sum of q
// over the +1 columns of block b and S_b = sum of q over block b,
//   y = sum_b s_b (2 P_b - S_b) = 2 S sum_b u_b P_b - C,   C = sum_b s_b S_b (once per x row);
// every P_b is an exact integer.  AVX2: table lookups of partial P_b per 4 columns, times s_b
// (onebit_cpu_i8lut.cpp); AVX512-VNNI: vpdpbusd(u_b, q masked by the bits) sums u_b P_b in int32
// lanes with no float work per block (bin_i8_vnni).
constexpr int64_t QB = 128;

struct QuantX {
  std::vector<int8_t> q;   // [M, ldq], zero padded
  std::vector<float> s;    // [M, nb]: s_b = S u_b
  std::vector<uint8_t> u;  // [M, nb]: u_b
  std::vector<float> S;    // [M]
  std::vector<float> c;    // [M]: sum_b s_b S_b
  int64_t ldq = 0, nb = 0;
};

// ---------------------------------------------------------------- binary: fixed-point x (exact)
// (algo=fx / fxlut, onebit_cpu_fixed.cpp) x per row in 24-bit fixed point, X = round(x / 2^e)
// with |X| <= FX_LIMIT = 127 (2^16 + 2^8 + 1): as int32 (fxlut's tables) or as three balanced int8
// digit planes (fx).
constexpr int FX_PLANES = 3;
constexpr int32_t FX_LIMIT = 127 * (65536 + 256 + 1);

struct FixedX {
  std::vector<int32_t> X;     // [M, ldq] (tables = true)
  std::vector<int8_t> d;      // [M, FX_PLANES, ldq] digits, low plane first, zero padded (planes = true)
  std::vector<int64_t> T;     // [M]: sum of X over the row
  std::vector<double> scale;  // [M]: 2^e (0 for an all-zero row)
  int64_t ldq = 0, nb = 0;
  bool finite = true;         // false: some row holds inf / nan (use an fp32 kernel)
};
// simd: the AVX2 helpers below for the largest |x| and for X (identical results)
FixedX fixed_x(const float* xs, int64_t M, int64_t ldx, int64_t K, bool planes, bool tables, bool simd);
// max |x_k| over k < n; finite = false where some x_k is inf or nan
AVX2_TARGET float fixed_amax_avx2(const float* x, int64_t n, bool& finite);
// X_k = round_half_even(x_k * inv) for k < n (inv: a power of two, a normal float); returns sum X
AVX2_TARGET int64_t fixed_row_avx2(const float* x, int64_t n, float inv, int32_t* X);
// algo=fxlut (AVX-512): acc[m, n] for every x row m < M by lookups in 16-entry int32 tables of X
// (one per 4 columns) over the transposed bits (transposed_bits)
void bin_fx_lut(const FixedX& fx, int64_t M, const at::Tensor& packed, float* acc);
// algo=fxlut on AVX2 (onebit_cpu_fixed_avx2.cpp): the same sums by 8-entry tables per 3 columns
void bin_fx_lut_avx2(const FixedX& fx, int64_t M, const at::Tensor& packed, float* acc);
FX_TARGET void bin_fx_vnni(const FixedX& fx, int64_t m0, int64_t M, const uint8_t* W, int64_t KB,
                             int64_t n0, int64_t n1, float* y, int64_t ldy);

// ---------------------------------------------------------------- onebit_cpu_gemm.cpp
// the batched path: acc[M, N] (before the epilogue) = xs[:, :K] (fp32, rounded as the reference)
// times the expanded weight.  AVX2, binary: ±1 fp32 tiles sized to L2 (ONEBIT_CPU_TILE_BYTES
// overrides); otherwise blocks of 1024 rows in dt (AVX-512 binary: masked blends; else a byte table)
void gemm_avx2_f32(const at::Tensor& xs, int64_t K, const uint8_t* W, int64_t N, int64_t KB, at::Tensor& acc);
void gemm_expanded(const at::Tensor& xs, int64_t K, const uint8_t* W, int64_t N, int64_t KB, bool ternary,
                   bool avx512, at::ScalarType dt, at::Tensor& acc);

// ---------------------------------------------------------------- onebit_cpu_portable.cpp
void bin_scalar(const float* x, int64_t M, int64_t ldx, const uint8_t* W, int64_t KB, int64_t n0,
                int64_t n1, float* y, int64_t ldy);
void ter_scalar(const float* x, int64_t M, int64_t ldx, const uint8_t* W, int64_t KB, int64_t n0,
                int64_t n1, float* y, int64_t ldy);
// avx2: the blocks by block_amax_avx2 / quant_block_avx2 (the dispatcher's ISA choice; identical
// results: the same IEEE operations as the scalar loops)
QuantX quantize_x(const float* xs, int64_t M, int64_t ldx, int64_t K, bool avx2);
void bin_i8_scalar(const QuantX& qx, int64_t m0, int64_t M, const uint8_t* W, int64_t KB,
                   int64_t n0, int64_t n1, float* y, int64_t ldy);
void bin_build_lut(const float* xm, int64_t KB, float* lut);
void bin_lut_rows(const float* lut, const uint8_t* W, int64_t KB, int64_t n0, int64_t n1,
                  float* y);

// ---------------------------------------------------------------- onebit_cpu_avx2.cpp
AVX2_TARGET void bin_avx2(const float* x, int64_t M, int64_t ldx, const uint8_t* W, int64_t KB,
                          int64_t n0, int64_t n1, float* y, int64_t ldy);
template <bool BLEND>  // instantiated for false (xor) and true (blend)
AVX2_TARGET void bin_avx2_flip(const float* x, int64_t M, int64_t ldx, const uint8_t* W,
                               int64_t KB, int64_t n0, int64_t n1, float* y, int64_t ldy);
AVX2_TARGET float block_amax_avx2(const float* x, int64_t n);
AVX2_TARGET int64_t quant_block_avx2(const float* x, int64_t n, float s, int8_t* q);
AVX2_TARGET void expand_bin_f32_avx2(const uint8_t* W, int64_t KB, int64_t n0, int64_t n1,
                                     float* buf, int64_t ldb);
AVX2_TARGET void ter_avx2(const float* x, int64_t M, int64_t ldx, const uint8_t* W, int64_t KB,
                          int64_t n0, int64_t n1, float* y, int64_t ldy);

// ---------------------------------------------------------------- onebit_cpu_i8lut.cpp
// algo=i8 on AVX2 (and AVX-512 without VNNI): acc[m, n] (before the h epilogue) for every x row
// m < M and output n, by table lookups over a cached 32-row transposed copy of `packed`
void bin_i8_lut(const QuantX& qx, int64_t M, const at::Tensor& packed, float* acc);
// the packed bits transposed in tiles, made on the first call for a weight and cached (keyed by
// storage, shape, layout and version counter); rows past N and bytes past KB zero, KBp >= KB a
// multiple of 4 bytes per row.  BITS_BYTES (the AVX2 int8 kernel): tiles of BITS_TILE rows,
// R[tile][j][r] = W[BITS_TILE tile + r][j].  BITS_DWORDS (fxlut): tiles of 16 rows, 4 bytes of a
// row together, R[tile][q][r][i] = W[16 tile + r][4q + i]
constexpr int64_t BITS_TILE = 32, BITS_BYTES = 0, BITS_DWORDS = 1;
at::Tensor transposed_bits(const at::Tensor& packed, int64_t KBp, int64_t layout);

// ---------------------------------------------------------------- onebit_cpu_avx512.cpp
AVX512_TARGET void bin_avx512(const float* x, int64_t M, int64_t ldx, const uint8_t* W,
                              int64_t KB, int64_t n0, int64_t n1, float* y, int64_t ldy);
AVX512_TARGET void bin_avx512_shift(const float* x, int64_t M, int64_t ldx, const uint8_t* W,
                                    int64_t KB, int64_t n0, int64_t n1, float* y, int64_t ldy);
AVX512_TARGET void bin_avx512_psum(const float* xc, const float* cs, const float* ss, int64_t M,
                                   int64_t ldx, const uint8_t* W, int64_t KB, int64_t K,
                                   int64_t n0, int64_t n1, float* y, int64_t ldy);
template <int NP>  // instantiated for 1, 2, 3 bf16 parts of x
BF16_TARGET void bin_bf16dp(const uint16_t* xparts, int64_t pstride, int64_t M, int64_t ldx,
                            const uint8_t* W, int64_t KB, int64_t n0, int64_t n1, float* y,
                            int64_t ldy);
AVX512_TARGET void expand_bin16_avx512(const uint8_t* W, int64_t KB, int64_t n0, int64_t n1,
                                       uint16_t* buf, int64_t ldb, uint16_t one);
AVX512_TARGET void expand_bin_f32_avx512(const uint8_t* W, int64_t KB, int64_t n0, int64_t n1,
                                         float* buf, int64_t ldb);
VNNI_TARGET void bin_i8_vnni(const QuantX& qx, int64_t m0, int64_t M, const uint8_t* W,
                             int64_t KB, int64_t n0, int64_t n1, float* y, int64_t ldy);
AVX512_TARGET void ter_avx512(const float* x, int64_t M, int64_t ldx, const uint8_t* W,
                              int64_t KB, int64_t n0, int64_t n1, float* y, int64_t ldy);

// ---------------------------------------------------------------- attention_cpu.cpp
// onebit::decode_attention (one query position, keys stored transposed), fp32, isa 2 (AVX-512) or 1 (AVX2)
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& kt, const at::Tensor& v, double scale, int64_t isa);

}  // namespace onebit_packed
