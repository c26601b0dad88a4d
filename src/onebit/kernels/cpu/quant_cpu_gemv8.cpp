// The batch-1, fp32 GEMV of 8-bit codes (quant_linear, bits 8): the decode step's int8 head.
//
// quant_cpu_simd.cpp's row kernels dequantize every weight, (q - zero) * scale, before the FMA:
// per 8 (AVX2) or 16 (AVX-512) weights a widening load, a conversion, a subtraction, a
// multiplication and the FMA, with the group loop, a tail copy and the accumulators kept in
// memory around it.  Here the group's scale is taken out of the sum,
//
//   y[n] = sum_g s_g · sum_{k in g} (q_k - z_g) x_k,
//
// so a weight costs a widening load, a conversion, the subtraction (exact: q and z_g are
// integers, or rounded as the reference rounds q - z) and an FMA; per group one FMA with the scale.
// Whole groups of a multiple of 32 columns run a loop without calls or tails (4 independent FMA
// chains; software prefetching of the next rows made it slower: the hardware prefetcher suffices).  In fp32 this differs from the reference
// (kernels/reference.py: each weight rounded as (q - z) * s, then the dot product) only in the
// rounding of the products (one per group instead of one per weight): within the fp32 tolerance
// of tests/kernels/test_quant_cpu.py.  bf16/fp16 activations round every weight to T, which this
// form does not reproduce: they keep quant_cpu_simd.cpp's kernels.
#include "quant_cpu.h"

#include <immintrin.h>

namespace onebit_quant {
namespace {

#define G8_AVX2 __attribute__((target("avx2,fma,f16c")))
#define G8_512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,bmi2,fma")))

// the row's scales (and, need_z, zeros) as fp32 into sb / zb (RT 0: no rounding); fp16 scales 8 at a time
// (AVX2 + F16C: also called from the AVX-512 kernel)
G8_AVX2 void row_params_f32(const QP& p, int64_t n, float* zb, float* sb, bool need_z) {
  int64_t g = 0;
  if (p.sk == P_F16) {
    const uint16_t* s = static_cast<const uint16_t*>(p.s) + n * p.s_rs;
    for (; g + 8 <= p.ng; g += 8)
      _mm256_storeu_ps(sb + g, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + g))));
  }
  for (; g < p.ng; ++g) sb[g] = ld(p.s, n * p.s_rs + g, p.sk);
  if (!need_z) return;  // every group whole: the zeros are read in place (whole_groups_*)
  if (p.z)
    for (g = 0; g < p.ng; ++g) zb[g] = ld(p.z, n * p.z_rs + g, p.zk);
  else
    for (g = 0; g < p.ng; ++g) zb[g] = p.zsym;
}

G8_AVX2 inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

G8_AVX2 inline __m256 codes8(const uint8_t* c) {
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c))));
}

// sum_{k in [k0, k1)} (q_k - zg) x_k as 8 lanes, zg rounded as the reference rounds q - z (any
// group: k0 a multiple of 8; codes past the row's bytes through chunk())
G8_AVX2 inline __m256 group_dot_avx2(const QP& p, const uint8_t* w, const float* x, int64_t k0, int64_t k1, float zg) {
  const __m256 z = _mm256_set1_ps(zg);
  __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();
  const int64_t kd = std::min(k1, p.KB / 8 * 8);
  int64_t k = k0;
  for (; k + 16 <= kd; k += 16) {
    a = _mm256_fmadd_ps(_mm256_sub_ps(codes8(w + k), z), _mm256_loadu_ps(x + k), a);
    b = _mm256_fmadd_ps(_mm256_sub_ps(codes8(w + k + 8), z), _mm256_loadu_ps(x + k + 8), b);
  }
  alignas(32) uint8_t tmp[32];
  for (; k < k1; k += 8) a = _mm256_fmadd_ps(_mm256_sub_ps(codes8(chunk(w, k, p.KB, 8, tmp)), z), _mm256_loadu_ps(x + k), a);
  return _mm256_add_ps(a, b);
}

// codes 8 at a time minus an integer zero, in the integer domain (the vector ALUs, not the FP
// pipes the conversion uses)
G8_AVX2 inline __m256 codes8_minus(const uint8_t* c, __m256i z) {
  return _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c))), z));
}

// sum over the whole groups [g0, g1) of s_g sum_k (q_k - z_g) x_k, groups of a multiple of 32
// columns whose bytes all lie in the row, integer zeros: no calls, no tails, the chains in registers.
// SYM: the zero is the constant 2**7 (no per-group broadcast); GC: the group size when it is 32
// (fully unrolled), else 0 (a loop over the group's 32-column blocks)
template <bool SYM, int GC>
G8_AVX2 inline __m256 whole_groups_avx2(const QP& p, int64_t n, const uint8_t* w, const float* x, const float* sb,
                                         int64_t g0, int64_t g1) {
  const int64_t G = GC ? GC : p.G;
  const uint8_t* zu = SYM ? nullptr : static_cast<const uint8_t*>(p.z) + n * p.z_rs;
  __m256i z = _mm256_set1_epi32(128);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t g = g0; g < g1; ++g) {
    if constexpr (!SYM) z = _mm256_set1_epi32(zu[g]);
    __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps(), c = _mm256_setzero_ps(), d = _mm256_setzero_ps();
    for (int64_t k = g * G; k < (g + 1) * G; k += 32) {
      a = _mm256_fmadd_ps(codes8_minus(w + k, z), _mm256_loadu_ps(x + k), a);
      b = _mm256_fmadd_ps(codes8_minus(w + k + 8, z), _mm256_loadu_ps(x + k + 8), b);
      c = _mm256_fmadd_ps(codes8_minus(w + k + 16, z), _mm256_loadu_ps(x + k + 16), c);
      d = _mm256_fmadd_ps(codes8_minus(w + k + 24, z), _mm256_loadu_ps(x + k + 24), d);
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(sb[g]), _mm256_add_ps(_mm256_add_ps(a, b), _mm256_add_ps(c, d)), acc);
  }
  return acc;
}

G8_AVX2 inline __m256 whole_avx2(const QP& p, int64_t n, const uint8_t* w, const float* x, const float* sb, int64_t gw) {
  if (p.z) return p.G == 32 ? whole_groups_avx2<false, 32>(p, n, w, x, sb, 0, gw) : whole_groups_avx2<false, 0>(p, n, w, x, sb, 0, gw);
  return p.G == 32 ? whole_groups_avx2<true, 32>(p, n, w, x, sb, 0, gw) : whole_groups_avx2<true, 0>(p, n, w, x, sb, 0, gw);
}

// groups before this one are whole (multiples of 32 columns, every byte in the row) and have
// integer zeros (symmetric, or uint8 zeros); the rest take group_dot
inline int64_t whole_groups(const QP& p) {
  if (p.ng == 1 || p.G % 32 != 0 || (p.z && p.zk != P_U8)) return 0;
  return std::min(p.ng, p.KB / p.G);
}

G8_AVX2 void gemv8_avx2(const QP& p, int64_t n0, int64_t n1, const float* x, float* y) {
  const int64_t gw = whole_groups(p);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* w = p.W + n * p.KB;
    row_params_f32(p, n, p.zbuf, p.sbuf, gw < p.ng);
    const float* sb = p.sbuf;
    __m256 acc = whole_avx2(p, n, w, x, sb, gw);
    for (int64_t g = gw; g < p.ng; ++g)
      acc = _mm256_fmadd_ps(_mm256_set1_ps(sb[g]), group_dot_avx2(p, w, x, g * p.G, std::min(p.K, (g + 1) * p.G), p.zbuf[g]), acc);
    y[n] = hsum8(acc);
  }
}

// ---------------------------------------------------------------------------------- AVX-512
G8_512 inline __m512 codes16(const uint8_t* c) {
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c))));
}

G8_512 inline __m512 group_dot_512(const QP& p, const uint8_t* w, const float* x, int64_t k0, int64_t k1, float zg) {
  const __m512 z = _mm512_set1_ps(zg);
  __m512 a = _mm512_setzero_ps(), b = _mm512_setzero_ps();
  const int64_t kd = std::min(k1, p.KB / 16 * 16);
  int64_t k = k0;
  for (; k + 32 <= kd; k += 32) {
    a = _mm512_fmadd_ps(_mm512_sub_ps(codes16(w + k), z), _mm512_loadu_ps(x + k), a);
    b = _mm512_fmadd_ps(_mm512_sub_ps(codes16(w + k + 16), z), _mm512_loadu_ps(x + k + 16), b);
  }
  alignas(64) uint8_t tmp[32];
  for (; k < k1; k += 16) a = _mm512_fmadd_ps(_mm512_sub_ps(codes16(chunk(w, k, p.KB, 16, tmp)), z), _mm512_loadu_ps(x + k), a);
  return _mm512_add_ps(a, b);
}

G8_512 inline __m512 codes16_minus(const uint8_t* c, __m512i z) {
  return _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c))), z));
}

template <bool SYM, int GC>
G8_512 inline __m512 whole_groups_512(const QP& p, int64_t n, const uint8_t* w, const float* x, const float* sb,
                                      int64_t g0, int64_t g1) {
  const int64_t G = GC ? GC : p.G;
  const uint8_t* zu = SYM ? nullptr : static_cast<const uint8_t*>(p.z) + n * p.z_rs;
  __m512i z = _mm512_set1_epi32(128);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t g = g0; g < g1; ++g) {
    if constexpr (!SYM) z = _mm512_set1_epi32(zu[g]);
    __m512 a = _mm512_setzero_ps(), b = _mm512_setzero_ps();
    for (int64_t k = g * G; k < (g + 1) * G; k += 32) {
      a = _mm512_fmadd_ps(codes16_minus(w + k, z), _mm512_loadu_ps(x + k), a);
      b = _mm512_fmadd_ps(codes16_minus(w + k + 16, z), _mm512_loadu_ps(x + k + 16), b);
    }
    acc = _mm512_fmadd_ps(_mm512_set1_ps(sb[g]), _mm512_add_ps(a, b), acc);
  }
  return acc;
}

G8_512 inline __m512 whole_512(const QP& p, int64_t n, const uint8_t* w, const float* x, const float* sb, int64_t gw) {
  if (p.z) return p.G == 32 ? whole_groups_512<false, 32>(p, n, w, x, sb, 0, gw) : whole_groups_512<false, 0>(p, n, w, x, sb, 0, gw);
  return p.G == 32 ? whole_groups_512<true, 32>(p, n, w, x, sb, 0, gw) : whole_groups_512<true, 0>(p, n, w, x, sb, 0, gw);
}

G8_512 void gemv8_512(const QP& p, int64_t n0, int64_t n1, const float* x, float* y) {
  const int64_t gw = whole_groups(p);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* w = p.W + n * p.KB;
    row_params_f32(p, n, p.zbuf, p.sbuf, gw < p.ng);
    const float* sb = p.sbuf;
    __m512 acc = whole_512(p, n, w, x, sb, gw);
    for (int64_t g = gw; g < p.ng; ++g)
      acc = _mm512_fmadd_ps(_mm512_set1_ps(sb[g]), group_dot_512(p, w, x, g * p.G, std::min(p.K, (g + 1) * p.G), p.zbuf[g]), acc);
    y[n] = _mm512_reduce_add_ps(acc);
  }
}

}  // namespace

bool gemv8_fits(const QP& p, int64_t isa) {
  // SIMD chunks must not cross groups: groups of a multiple of 16 (AVX-512) / 8 (AVX2) columns, or one
  return p.bits == 8 && (isa == QISA_AVX2 || isa == QISA_AVX512) &&
         (p.ng == 1 || p.G % (isa == QISA_AVX512 ? 16 : 8) == 0);
}

void gemv8_rows(const QP& p, int64_t isa, int64_t n0, int64_t n1, const float* x, float* y) {
  if (isa == QISA_AVX512)
    gemv8_512(p, n0, n1, x, y);
  else
    gemv8_avx2(p, n0, n1, x, y);
}

}  // namespace onebit_quant
