// AVX2 (+FMA) kernels of the packed onebit ops: ±1 table + FMA (the AVX2 default), exact sign
// flip (xor / blend), ±1 fp32 expansion for the GEMM path, ternary (int8 activations:
// onebit_cpu_i8lut.cpp).  Built
// without -march: each function carries AVX2_TARGET and runs only where onebit_cpu.cpp's
// run-time dispatch found AVX2.  Shared declarations: onebit_cpu.h.
#include "onebit_cpu.h"

#include <immintrin.h>

namespace onebit_packed {

// ---------------------------------------------------------------- binary: AVX2 (+FMA)
__attribute__((target("avx2,fma"))) inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) void bin_avx2(const float* x, int64_t M, int64_t ldx,
                                                  const uint8_t* W, int64_t KB, int64_t n0,
                                                  int64_t n1, float* y, int64_t ldy) {
  const auto& T = tables().bin;
  for (int64_t m = 0; m < M; ++m) {
    const float* xm = x + m * ldx;
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) {
      const uint8_t* w0 = W + n * KB;
      const uint8_t* w1 = w0 + KB;
      const uint8_t* w2 = w1 + KB;
      const uint8_t* w3 = w2 + KB;
      // two accumulators per row: 8 independent FMA chains hide the FMA latency
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
      const uint8_t* w[4] = {w0, w1, w2, w3};
      int64_t j = 0;
      for (; j + 2 <= KB; j += 2) {
        if ((j & 63) == 0) prefetch_ahead(w, KB, j);
        const __m256 xv = _mm256_loadu_ps(xm + 8 * j), xw = _mm256_loadu_ps(xm + 8 * j + 8);
        a0 = _mm256_fmadd_ps(xv, _mm256_load_ps(T[w0[j]]), a0);
        a1 = _mm256_fmadd_ps(xv, _mm256_load_ps(T[w1[j]]), a1);
        a2 = _mm256_fmadd_ps(xv, _mm256_load_ps(T[w2[j]]), a2);
        a3 = _mm256_fmadd_ps(xv, _mm256_load_ps(T[w3[j]]), a3);
        b0 = _mm256_fmadd_ps(xw, _mm256_load_ps(T[w0[j + 1]]), b0);
        b1 = _mm256_fmadd_ps(xw, _mm256_load_ps(T[w1[j + 1]]), b1);
        b2 = _mm256_fmadd_ps(xw, _mm256_load_ps(T[w2[j + 1]]), b2);
        b3 = _mm256_fmadd_ps(xw, _mm256_load_ps(T[w3[j + 1]]), b3);
      }
      for (; j < KB; ++j) {
        const __m256 xv = _mm256_loadu_ps(xm + 8 * j);
        a0 = _mm256_fmadd_ps(xv, _mm256_load_ps(T[w0[j]]), a0);
        a1 = _mm256_fmadd_ps(xv, _mm256_load_ps(T[w1[j]]), a1);
        a2 = _mm256_fmadd_ps(xv, _mm256_load_ps(T[w2[j]]), a2);
        a3 = _mm256_fmadd_ps(xv, _mm256_load_ps(T[w3[j]]), a3);
      }
      y[m * ldy + n] = hsum256(_mm256_add_ps(a0, b0));
      y[m * ldy + n + 1] = hsum256(_mm256_add_ps(a1, b1));
      y[m * ldy + n + 2] = hsum256(_mm256_add_ps(a2, b2));
      y[m * ldy + n + 3] = hsum256(_mm256_add_ps(a3, b3));
    }
    for (; n < n1; ++n) {
      const uint8_t* w0 = W + n * KB;
      __m256 a0 = _mm256_setzero_ps();
      for (int64_t j = 0; j < KB; ++j)
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xm + 8 * j), _mm256_load_ps(T[w0[j]]), a0);
      y[m * ldy + n] = hsum256(a0);
    }
  }
}

// ---------------------------------------------------------------- binary: AVX2 sign flip (exact)
// No table, no multiply: the 32 bits of a step are broadcast to every dword and vpsllvd moves bit
// 8c+i to the sign position of lane i of chunk c; then either
//   BLEND: t = blendv(-x, x, shifted)          (vblendvps picks by the sign bit: 1 op), or
//   XOR:   t = x ^ (~shifted & signbit)        (2 ops),
// acc += t.  Two accumulators per row, 4 rows per x load.  Trailing bytes: one more step on the
// zero-padded bits (x is zero past in_features, so t = ±0 there).

template <bool BLEND>
AVX2_TARGET inline __m256 flip8(__m256 xv, __m256 nx, __m256i b, __m256i sh, __m256i sgn) {
  const __m256i s = _mm256_sllv_epi32(b, sh);
  if (BLEND) return _mm256_blendv_ps(nx, xv, _mm256_castsi256_ps(s));
  return _mm256_castsi256_ps(_mm256_xor_si256(_mm256_castps_si256(xv), _mm256_andnot_si256(s, sgn)));
}

// 32 columns of 4 rows (a lambda would lose the target attribute)
template <bool BLEND>
AVX2_TARGET inline __attribute__((always_inline)) void flip_step(const float* xj, const uint32_t* bits,
                                                                 __m256 (*a)[2], const __m256i* sh,
                                                                 __m256i sgn) {
  __m256 xv[4], nx[4];
  for (int c = 0; c < 4; ++c) {
    xv[c] = _mm256_loadu_ps(xj + 8 * c);
    nx[c] = BLEND ? _mm256_xor_ps(xv[c], _mm256_castsi256_ps(sgn)) : xv[c];
  }
  for (int r = 0; r < 4; ++r) {
    const __m256i b = _mm256_set1_epi32(int(bits[r]));
    for (int c = 0; c < 4; ++c)
      a[r][c & 1] = _mm256_add_ps(a[r][c & 1], flip8<BLEND>(xv[c], nx[c], b, sh[c], sgn));
  }
}

template <bool BLEND>
AVX2_TARGET void bin_avx2_flip(const float* x, int64_t M, int64_t ldx, const uint8_t* W,
                               int64_t KB, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  const __m256i sgn = _mm256_set1_epi32(int(0x80000000u));
  __m256i sh[4];
  for (int c = 0; c < 4; ++c)
    sh[c] = _mm256_setr_epi32(31 - 8 * c, 30 - 8 * c, 29 - 8 * c, 28 - 8 * c, 27 - 8 * c,
                              26 - 8 * c, 25 - 8 * c, 24 - 8 * c);
  const int64_t K4 = KB / 4, rem = KB - 4 * K4;
  for (int64_t m = 0; m < M; ++m) {
    const float* xm = x + m * ldx;
    for (int64_t n = n0; n < n1; n += 4) {
      const int rows = int(std::min<int64_t>(4, n1 - n));
      const uint8_t* w[4];
      for (int r = 0; r < 4; ++r) w[r] = W + (n + std::min(r, rows - 1)) * KB;
      __m256 a[4][2];
      for (int r = 0; r < 4; ++r) a[r][0] = a[r][1] = _mm256_setzero_ps();
      uint32_t bits[4];
      for (int64_t j = 0; j < K4; ++j) {
        if ((j & 15) == 0) prefetch_ahead(w, KB, 4 * j);
        for (int r = 0; r < 4; ++r) std::memcpy(&bits[r], w[r] + 4 * j, 4);
        flip_step<BLEND>(xm + 32 * j, bits, a, sh, sgn);
      }
      if (rem) {
        for (int r = 0; r < 4; ++r) {
          bits[r] = 0;
          std::memcpy(&bits[r], w[r] + 4 * K4, rem);
        }
        flip_step<BLEND>(xm + 32 * K4, bits, a, sh, sgn);
      }
      for (int r = 0; r < rows; ++r) y[m * ldy + n + r] = hsum256(_mm256_add_ps(a[r][0], a[r][1]));
    }
  }
}

template void bin_avx2_flip<false>(const float* x, int64_t M, int64_t ldx, const uint8_t* W, int64_t KB, int64_t n0, int64_t n1, float* y, int64_t ldy);
template void bin_avx2_flip<true>(const float* x, int64_t M, int64_t ldx, const uint8_t* W, int64_t KB, int64_t n0, int64_t n1, float* y, int64_t ldy);

// ---------------------------------------------------------------- int8 activations: one block
// quantize_x's passes (onebit_cpu_portable.cpp) with the same IEEE operations 8 lanes at a time:
// a block's max |x|; its q = round_half_even(x / s) clamped to ±127 (vroundps = nearbyint) for a
// given s > 0, returning S = sum q
AVX2_TARGET float block_amax_avx2(const float* x, int64_t n) {
  const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 mx = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) mx = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(x + k), absm), mx);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, mx);
  float amax = 0.f;
  for (int i = 0; i < 8; ++i) amax = std::max(amax, lanes[i]);
  for (int64_t i = k; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  return amax;
}

AVX2_TARGET int64_t quant_block_avx2(const float* x, int64_t n, float s, int8_t* q) {
  int64_t sum = 0;
  const __m256 sv = _mm256_set1_ps(s), lo = _mm256_set1_ps(-127.f), hi = _mm256_set1_ps(127.f);
  __m256i acc = _mm256_setzero_si256();
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    __m256 v = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(x + k), sv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256i vi = _mm256_cvtps_epi32(_mm256_min_ps(hi, _mm256_max_ps(lo, v)));
    acc = _mm256_add_epi32(acc, vi);
    const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(vi), _mm256_extracti128_si256(vi, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(q + k), _mm_packs_epi16(w, w));
  }
  alignas(32) int32_t t[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(t), acc);
  for (int i = 0; i < 8; ++i) sum += t[i];
  for (; k < n; ++k) {
    float v = std::nearbyint(x[k] / s);
    v = std::min(127.f, std::max(-127.f, v));
    q[k] = int8_t(v);
    sum += int64_t(v);
  }
  return sum;
}

// ---------------------------------------------------------------- binary: expand to ±1 fp32
// rows [n0, n1) -> buf [n1 - n0, ldb] (ldb >= 8 KB), ±1.0f from the bits, AVX2 (sllv + and + or)
AVX2_TARGET void expand_bin_f32_avx2(const uint8_t* W, int64_t KB, int64_t n0, int64_t n1,
                                     float* buf, int64_t ldb) {
  const __m256i sgn = _mm256_set1_epi32(int(0x80000000u)), one = _mm256_set1_epi32(0x3F800000);
  const __m256i sh = _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24);
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* w = W + n * KB;
    float* o = buf + (n - n0) * ldb;
    for (int64_t j = 0; j < KB; ++j) {
      const __m256i s = _mm256_sllv_epi32(_mm256_set1_epi32(int(w[j])), sh);
      // bit 1 -> +1.0 (sign clear), bit 0 -> -1.0: sign = ~bit
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + 8 * j),
                          _mm256_or_si256(_mm256_andnot_si256(s, sgn), one));
    }
  }
}

// ---------------------------------------------------------------- ternary: AVX2
__attribute__((target("avx2,fma"))) void ter_avx2(const float* x, int64_t M, int64_t ldx,
                                                  const uint8_t* W, int64_t KB, int64_t n0,
                                                  int64_t n1, float* y, int64_t ldy) {
  const auto& T = tables().ter;
  const int64_t K2 = KB / 2;  // 8 columns per step
  for (int64_t m = 0; m < M; ++m) {
    const float* xm = x + m * ldx;
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* w = W + n * KB;
      __m256 a0 = _mm256_setzero_ps();
      for (int64_t j = 0; j < K2; ++j) {
        __m256 c = _mm256_set_m128(_mm_load_ps(T[w[2 * j + 1]]), _mm_load_ps(T[w[2 * j]]));
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xm + 8 * j), c, a0);
      }
      float s = hsum256(a0);
      for (int64_t j = 2 * K2; j < KB; ++j)
        for (int i = 0; i < 4; ++i) s += T[w[j]][i] * xm[4 * j + i];
      y[m * ldy + n] = s;
    }
  }
}

}  // namespace onebit_packed
