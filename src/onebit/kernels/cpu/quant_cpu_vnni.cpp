// quant_linear with int8 activations (ONEBIT_CPU_ALGO=i8, opt-in, not exact) on AVX512-VNNI: the
// GEMV of the symmetric 4- and 8-bit block formats (the int4 / int8 LM head and embedding =
// llama.cpp's Q4_0 / Q8_0, RTN / GPTQ without zero points) with integer dot products, as the
// 1-bit GEMV of the same mode and as llama.cpp does with its q8 activations.
//
// x (fp32) is quantized per block of QB8 = 128 columns: s_c = max|x_c| / 127,
// q = round_half_even(x / s_c) in [-127, 127] (0 where s_c = 0).  A weight is (code - z) d_g with
// z = 2**(bits-1) and d_g the fp16 scale of its group, so per chunk c of 128 columns
//   y_n = sum_c s_c sum_g d_g [ sum_{k in g} code_k q_k  -  z sum_{k in g} q_k ]
// vpdpbusd(acc, codes (u8), q (s8)) adds four code * q products per int32 lane; the lanes start
// at -z * (the sum of their q), which depends on x only (once per call), so every lane holds an
// exact integer; then one cvt + fma per 16 lanes by d_g s_c.
//   4-bit: 64 bytes = one chunk; low / high nibbles (and, shift + and) meet x stored permuted (the
//          even columns of the chunk, then the odd ones): lane i covers columns 8i .. 8i+7.
//   8-bit: 2 x 64 bytes per chunk, natural order: lane i of half h covers columns 64h+4i .. +3.
// Groups: 32, 64 or a multiple of 128 columns, or one per row; fp16 scales (else the exact path).
#include "quant_cpu.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cmath>
#include <vector>

namespace onebit_quant {

#define QVNNI __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,f16c,fma")))

bool i8_vnni_available() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}

bool i8_fits(const QP& p) {
  const bool groups = p.ng == 1 || p.G == 32 || p.G == 64 || p.G % QB8 == 0;
  return (p.bits == 4 || p.bits == 8) && p.z == nullptr && p.sk == P_F16 && groups;
}

XQ8 quantize_x8(const float* x, int64_t M, int64_t ldx, int64_t K, int bits) {
  XQ8 r;
  r.nc = (K + QB8 - 1) / QB8;
  r.ldq = r.nc * QB8;
  r.q.assign(M * r.ldq, 0);
  r.s.assign(M * r.nc, 0.f);
  r.ncorr.assign(M * r.nc * 32, 0);
  const int32_t z = 1 << (bits - 1);
  at::parallel_for(0, M * r.nc, 16, [&](int64_t b0, int64_t e0) {
    int8_t qc[QB8];
    for (int64_t i = b0; i < e0; ++i) {
      const int64_t m = i / r.nc, c = i % r.nc, k0 = c * QB8, n = std::min(K, k0 + QB8) - k0;
      const float* xr = x + m * ldx + k0;
      float amax = 0.f;
      for (int64_t k = 0; k < n; ++k) amax = std::max(amax, std::fabs(xr[k]));
      const float s = amax / 127.0f;
      r.s[i] = s;
      for (int64_t k = 0; k < QB8; ++k) {
        float v = k < n && s > 0.f ? std::nearbyint(xr[k] / s) : 0.f;
        qc[k] = int8_t(std::min(127.f, std::max(-127.f, v)));
      }
      int8_t* q = r.q.data() + m * r.ldq + k0;
      int32_t* nc = r.ncorr.data() + i * 32;
      if (bits == 4) {  // even columns, then odd; lane l: columns 8l .. 8l+7
        for (int j = 0; j < 64; ++j) {
          q[j] = qc[2 * j];
          q[64 + j] = qc[2 * j + 1];
        }
        for (int k = 0; k < QB8; ++k) nc[k / 8] -= z * qc[k];
      } else {  // natural order; lane l of half h: columns 64h + 4l .. +3
        for (int k = 0; k < QB8; ++k) {
          q[k] = qc[k];
          nc[(k / 64) * 16 + (k % 64) / 4] -= z * qc[k];
        }
      }
    }
  });
  return r;
}

namespace {

// the fp16 scales of groups first .. first+3 of a row (masked at its end), as the 16 lanes' scales
QVNNI inline __m512 lane_scales(const uint16_t* sc, int64_t first, int64_t ng, __m256i idx) {
  const int64_t cnt = std::min<int64_t>(4, ng - first);
  const __m128i h = _mm_maskz_loadu_epi16(__mmask8((1u << cnt) - 1), sc + first);
  return _mm512_cvtph_ps(_mm256_permutexvar_epi16(idx, _mm256_castsi128_si256(h)));
}

// 16-bit lane -> group offset from the first group of a 64-column span: lane l covers columns
// `per` l .. per l + per-1 of a span of 16 per columns
QVNNI inline __m256i group_index(int64_t G, int per) {
  alignas(32) uint16_t t[16];
  for (int l = 0; l < 16; ++l) t[l] = uint16_t(G >= 16 * per ? 0 : (per * l) / G);
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(t));
}

QVNNI inline __m512i load_bytes(const uint8_t* p, int64_t left) {  // 64 bytes, zeros past `left`
  if (left >= 64) return _mm512_loadu_si512(p);
  if (left <= 0) return _mm512_setzero_si512();
  return _mm512_maskz_loadu_epi8(~0ull >> (64 - left), p);
}

QVNNI void rows4(const QP& p, const XQ8& xq, int64_t m, int64_t n0, int64_t n1, float* y) {
  const __m512i lo4 = _mm512_set1_epi8(0x0F);
  const __m256i idx = group_index(p.G, 8);
  const int8_t* q = xq.q.data() + m * xq.ldq;
  const float* s = xq.s.data() + m * xq.nc;
  const int32_t* nc = xq.ncorr.data() + m * xq.nc * 32;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* w = p.W + n * p.KB;
    const uint16_t* sc = static_cast<const uint16_t*>(p.s) + n * p.s_rs;
    const __m512 one_scale = _mm512_cvtph_ps(_mm256_set1_epi16(int16_t(sc[0])));
    __m512 f = _mm512_setzero_ps();
    for (int64_t c = 0; c < xq.nc; ++c) {
      const __m512i v = load_bytes(w + 64 * c, p.KB - 64 * c);
      __m512i a = _mm512_loadu_si512(nc + 32 * c);
      a = _mm512_dpbusd_epi32(a, _mm512_and_si512(v, lo4), _mm512_loadu_si512(q + QB8 * c));
      a = _mm512_dpbusd_epi32(a, _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4), _mm512_loadu_si512(q + QB8 * c + 64));
      const __m512 d = p.ng == 1 ? one_scale : lane_scales(sc, QB8 * c / p.G, p.ng, idx);
      f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a), _mm512_mul_ps(d, _mm512_set1_ps(s[c])), f);
    }
    y[n] = _mm512_reduce_add_ps(f);
  }
}

QVNNI void rows8(const QP& p, const XQ8& xq, int64_t m, int64_t n0, int64_t n1, float* y) {
  const __m256i idx = group_index(p.G, 4);
  const int8_t* q = xq.q.data() + m * xq.ldq;
  const float* s = xq.s.data() + m * xq.nc;
  const int32_t* nc = xq.ncorr.data() + m * xq.nc * 32;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* w = p.W + n * p.KB;
    const uint16_t* sc = static_cast<const uint16_t*>(p.s) + n * p.s_rs;
    const __m512 one_scale = _mm512_cvtph_ps(_mm256_set1_epi16(int16_t(sc[0])));
    __m512 f0 = _mm512_setzero_ps(), f1 = f0;
    for (int64_t c = 0; c < xq.nc; ++c) {
      const int64_t o = QB8 * c;
      const __m512i a0 = _mm512_dpbusd_epi32(_mm512_loadu_si512(nc + 32 * c), load_bytes(w + o, p.KB - o),
                                             _mm512_loadu_si512(q + o));
      const __m512i a1 = _mm512_dpbusd_epi32(_mm512_loadu_si512(nc + 32 * c + 16),
                                             load_bytes(w + o + 64, p.KB - o - 64), _mm512_loadu_si512(q + o + 64));
      const __m512 d0 = p.ng == 1 ? one_scale : lane_scales(sc, o / p.G, p.ng, idx);
      const __m512 d1 = p.ng == 1 ? one_scale : lane_scales(sc, (o + 64) / p.G, p.ng, idx);
      const __m512 sv = _mm512_set1_ps(s[c]);
      f0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a0), _mm512_mul_ps(d0, sv), f0);
      f1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a1), _mm512_mul_ps(d1, sv), f1);
    }
    y[n] = _mm512_reduce_add_ps(_mm512_add_ps(f0, f1));
  }
}

}  // namespace

void gemv_i8_vnni(const QP& p, const float* x, int64_t M, int64_t ldx, float* y) {
  const XQ8 xq = quantize_x8(x, M, ldx, p.K, p.bits);
  const int64_t grain = std::max<int64_t>(16, std::min<int64_t>(256, p.N / (4 * at::get_num_threads()) + 1));
  at::parallel_for(0, p.N, grain, [&](int64_t n0, int64_t n1) {
    for (int64_t m = 0; m < M; ++m) {
      if (p.bits == 4) rows4(p, xq, m, n0, n1, y + m * p.N);
      else rows8(p, xq, m, n0, n1, y + m * p.N);
    }
  });
}

}  // namespace onebit_quant
