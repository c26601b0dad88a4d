// Shared by quant_cpu.cpp (drivers, portable kernels, registration) and quant_cpu_simd.cpp (the
// AVX2 / AVX-512 kernels): the layer description, parameter loads, rounding, code access.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace onebit_quant {

enum : int64_t { QISA_SCALAR = 0, QISA_AVX2 = 1, QISA_AVX512 = 2 };

// ---------------------------------------------------------------------------------- parameters
enum PKind : int { P_F32 = 0, P_F16 = 1, P_BF16 = 2, P_U8 = 3 };

inline float ld(const void* p, int64_t i, int k) {
  switch (k) {
    case P_F16: return static_cast<float>(static_cast<const c10::Half*>(p)[i]);
    case P_BF16: return static_cast<float>(static_cast<const c10::BFloat16*>(p)[i]);
    case P_U8: return static_cast<float>(static_cast<const uint8_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

// RT: the activation dtype whose rounding the weights follow (0 fp32, 1 bf16, 2 fp16)
template <int RT>
inline float rnd(float v) {
  if constexpr (RT == 1) return static_cast<float>(c10::BFloat16(v));
  else if constexpr (RT == 2) return static_cast<float>(c10::Half(v));
  else return v;
}

struct QP {
  const uint8_t* W;
  int64_t KB, K, Kp, N;  // bytes per packed row, in_features, in padded to 32, out_features
  int bits;              // 1 (block sign), 2, 4, 8
  int64_t G, ng;         // columns per group (K when one group), groups per row
  const void* s;
  int sk;
  int64_t s_rs;  // scale: data, kind, row stride (0: one row for all)
  const void* z;
  int zk;
  int64_t z_rs;  // zero: data (nullptr: symmetric), kind, row stride
  float zsym;    // the symmetric zero 2**(bits-1)
  float* zbuf;   // SIMD paths: per-thread room for one row's ng zeros and scales (+16)
  float* sbuf;
};

// (rounded zero, rounded scale) of group g of row n
template <int RT>
inline void group_params(const QP& p, int64_t n, int64_t g, float& z, float& s) {
  s = rnd<RT>(ld(p.s, n * p.s_rs + g, p.sk));
  z = p.z ? rnd<RT>(ld(p.z, n * p.z_rs + g, p.zk)) : p.zsym;
}

template <int RT>
inline float wval(int q, float z, float s) {  // the dequantized weight, as the reference rounds it
  return rnd<RT>(rnd<RT>(static_cast<float>(q) - z) * s);
}

inline int code_at(const uint8_t* w, int64_t k, int bits) {
  const int64_t bit = k * bits;
  return (w[bit >> 3] >> (bit & 7)) & ((1 << bits) - 1);
}

// position j (0..31) of a 32-column chunk of the permuted x -> its column in the chunk (AVX-512)
inline int perm_col(int bits, int j) {
  const int lane = j & 15, second = j >> 4;
  if (bits == 4) return 2 * lane + second;
  if (bits == 2) return ((lane & 1) ? 16 + lane - 1 : lane) + second;
  return j;
}

// the bytes of a chunk starting at byte `off` of a row; past the row's end: zeros (x is 0 there)
inline const uint8_t* chunk(const uint8_t* w, int64_t off, int64_t KB, int nbytes, uint8_t* tmp) {
  if (off + nbytes <= KB) return w + off;
  std::memset(tmp, 0, 32);
  std::memcpy(tmp, w + off, static_cast<size_t>(KB - off));
  return tmp;
}

// a GEMV / dequantization kernel over output rows [n0, n1) (contract: rows_avx512, quant_cpu_simd.cpp)
using RowsFn = void (*)(const QP&, int64_t, int64_t, const float*, int64_t, float*);

// quant_cpu_simd.cpp: the kernel for an ISA (QISA_AVX2 / QISA_AVX512), rounding type rt (0 fp32,
// 1 bf16, 2 fp16), bits (1 = block sign, 2, 4, 8) and x rows per call mb (1, 4, 8) ...
RowsFn pick_rows(int64_t isa, int rt, int bits, int mb);
// ... and AVX-512's dequantizing variant (rows stored in the permuted column order, as T)
RowsFn pick_dequant512(int rt, int bits);

// ---------------------------------------------------------------- quant_cpu_gemv8.cpp
// 8-bit codes, fp32 activations, one x row: the group's scale out of the sum (design there)
bool gemv8_fits(const QP& p, int64_t isa);
void gemv8_rows(const QP& p, int64_t isa, int64_t n0, int64_t n1, const float* x, float* y);

// ---------------------------------------------------------------- quant_cpu_vnni.cpp
// int8 activations (ONEBIT_CPU_ALGO=i8): x quantized per block of QB8 columns (design at the top
// of quant_cpu_vnni.cpp)
constexpr int64_t QB8 = 128;
constexpr int64_t QALGO_I8 = 6;  // dispatch._ALGO["i8"]

struct XQ8 {
  std::vector<int8_t> q;       // [M, ldq]; 4-bit: each chunk's even columns, then its odd ones
  std::vector<float> s;        // [M, nc]: s_c = max|x_c| / 127
  std::vector<int32_t> ncorr;  // [M, nc, 32]: -z * (sum of the q of each int32 lane)
  int64_t nc = 0, ldq = 0;
};

bool i8_vnni_available();
bool i8_fits(const QP& p);  // symmetric 4/8-bit codes, fp16 scales, groups the kernel handles
XQ8 quantize_x8(const float* x, int64_t M, int64_t ldx, int64_t K, int bits);
void gemv_i8_vnni(const QP& p, const float* x, int64_t M, int64_t ldx, float* y);  // y [M, N] fp32

}  // namespace onebit_quant
