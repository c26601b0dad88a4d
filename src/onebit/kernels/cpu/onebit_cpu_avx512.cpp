// AVX-512 kernels of the packed onebit ops: binary by mask registers / by shifted sign bits /
// by masked sums, binary by AVX512-BF16 dot products, ternary.  Built without -march: each
// function carries AVX512_TARGET / BF16_TARGET and runs only where onebit_cpu.cpp's run-time
// dispatch found the ISA.  Shared declarations: onebit_cpu.h.
#include "onebit_cpu.h"

#include <immintrin.h>

namespace onebit_packed {

// ---------------------------------------------------------------- binary: AVX-512

AVX512_TARGET inline __m512 flip(__m512 xv, uint32_t bits16, __m512 sgn) {
  // lanes whose bit is 0 (weight -1) get their sign flipped
  return _mm512_mask_xor_ps(xv, (__mmask16)(~bits16 & 0xFFFFu), xv, sgn);
}

AVX512_TARGET void bin_avx512(const float* x, int64_t M, int64_t ldx, const uint8_t* W,
                              int64_t KB, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  const __m512 sgn = _mm512_castsi512_ps(_mm512_set1_epi32(int(0x80000000u)));
  const int64_t K4 = KB / 4;  // 32 columns per step
  for (int64_t m = 0; m < M; ++m) {
    const float* xm = x + m * ldx;
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) {
      const uint8_t* w[4] = {W + n * KB, W + (n + 1) * KB, W + (n + 2) * KB, W + (n + 3) * KB};
      __m512 a[4][2];
      for (int r = 0; r < 4; ++r) a[r][0] = a[r][1] = _mm512_setzero_ps();
      for (int64_t j = 0; j < K4; ++j) {
        __m512 xa = _mm512_loadu_ps(xm + 32 * j);
        __m512 xb = _mm512_loadu_ps(xm + 32 * j + 16);
        for (int r = 0; r < 4; ++r) {
          uint32_t b;
          std::memcpy(&b, w[r] + 4 * j, 4);
          a[r][0] = _mm512_add_ps(a[r][0], flip(xa, b & 0xFFFFu, sgn));
          a[r][1] = _mm512_add_ps(a[r][1], flip(xb, b >> 16, sgn));
        }
      }
      for (int64_t j = 4 * K4; j < KB; ++j) {  // tail bytes: 8 columns each, upper lanes unused
        __m512 xv = _mm512_loadu_ps(xm + 8 * j);
        for (int r = 0; r < 4; ++r)
          a[r][0] = _mm512_mask_add_ps(a[r][0], 0xFF, a[r][0], flip(xv, w[r][j], sgn));
      }
      for (int r = 0; r < 4; ++r)
        y[m * ldy + n + r] = _mm512_reduce_add_ps(_mm512_add_ps(a[r][0], a[r][1]));
    }
    for (; n < n1; ++n) {
      const uint8_t* w0 = W + n * KB;
      __m512 a0 = _mm512_setzero_ps(), a1 = a0;
      for (int64_t j = 0; j < K4; ++j) {
        uint32_t b;
        std::memcpy(&b, w0 + 4 * j, 4);
        a0 = _mm512_add_ps(a0, flip(_mm512_loadu_ps(xm + 32 * j), b & 0xFFFFu, sgn));
        a1 = _mm512_add_ps(a1, flip(_mm512_loadu_ps(xm + 32 * j + 16), b >> 16, sgn));
      }
      for (int64_t j = 4 * K4; j < KB; ++j)
        a0 = _mm512_mask_add_ps(a0, 0xFF, a0, flip(_mm512_loadu_ps(xm + 8 * j), w0[j], sgn));
      y[m * ldy + n] = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    }
  }
}

// variant without mask registers: broadcast 32 bits, shift bit i into the sign position of lane
// i (vpsllvd), t = (-x) ^ (shifted & signbit) in one vpternlogd, acc += t.
AVX512_TARGET void bin_avx512_shift(const float* x, int64_t M, int64_t ldx, const uint8_t* W,
                                    int64_t KB, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  const __m512i sgn = _mm512_set1_epi32(int(0x80000000u));
  const __m512i sha = _mm512_set_epi32(16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31);
  const __m512i shb = _mm512_set_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const int64_t K4 = KB / 4;
  for (int64_t m = 0; m < M; ++m) {
    const float* xm = x + m * ldx;
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4) {
      const uint8_t* w[4] = {W + n * KB, W + (n + 1) * KB, W + (n + 2) * KB, W + (n + 3) * KB};
      __m512 a[4][2];
      for (int r = 0; r < 4; ++r) a[r][0] = a[r][1] = _mm512_setzero_ps();
      for (int64_t j = 0; j < K4; ++j) {
        if ((j & 15) == 0) prefetch_ahead(w, KB, 4 * j);
        __m512i na = _mm512_xor_si512(_mm512_castps_si512(_mm512_loadu_ps(xm + 32 * j)), sgn);
        __m512i nb = _mm512_xor_si512(_mm512_castps_si512(_mm512_loadu_ps(xm + 32 * j + 16)), sgn);
        for (int r = 0; r < 4; ++r) {
          uint32_t b;
          std::memcpy(&b, w[r] + 4 * j, 4);
          __m512i bw = _mm512_set1_epi32(int(b));
          __m512i ta = _mm512_ternarylogic_epi32(na, _mm512_sllv_epi32(bw, sha), sgn, 0x78);
          __m512i tb = _mm512_ternarylogic_epi32(nb, _mm512_sllv_epi32(bw, shb), sgn, 0x78);
          a[r][0] = _mm512_add_ps(a[r][0], _mm512_castsi512_ps(ta));
          a[r][1] = _mm512_add_ps(a[r][1], _mm512_castsi512_ps(tb));
        }
      }
      const __m512 sg = _mm512_castsi512_ps(sgn);
      for (int64_t j = 4 * K4; j < KB; ++j) {
        __m512 xv = _mm512_loadu_ps(xm + 8 * j);
        for (int r = 0; r < 4; ++r)
          a[r][0] = _mm512_mask_add_ps(a[r][0], 0xFF, a[r][0], flip(xv, w[r][j], sg));
      }
      for (int r = 0; r < 4; ++r)
        y[m * ldy + n + r] = _mm512_reduce_add_ps(_mm512_add_ps(a[r][0], a[r][1]));
    }
    if (n < n1) bin_avx512(x + m * ldx, 1, ldx, W, KB, n, n1, y + m * ldy, ldy);
  }
}

// ---------------------------------------------------------------- binary: AVX-512 masked sum
// One masked add per 16 weights: P = sum of x over the +1 columns, and sum s_i x_i = 2P - S.
// To keep that exact-ish when x has a large mean, x is centred first (x' = x - c, c = mean x):
//   sum s_i x_i = 2 P' - S' + c (2 popcount(row) - K),   S' = sum x'  (~0)
// so no large partial sums cancel.  The popcount runs on the scalar ALU beside the vector adds.
AVX512_TARGET void bin_avx512_psum(const float* xc, const float* cs, const float* ss, int64_t M,
                                   int64_t ldx, const uint8_t* W, int64_t KB, int64_t K,
                                   int64_t n0, int64_t n1, float* y, int64_t ldy) {
  const int64_t K4 = KB / 4;
  const int tailbits = int(K - 8 * (KB - 1));  // valid bits in the last byte (1..8)
  const unsigned padmask = tailbits >= 8 ? 0u : (0xFFu & ~((1u << tailbits) - 1u));
  for (int64_t m = 0; m < M; ++m) {
    const float* xm = xc + m * ldx;
    const double c = cs[m], S = ss[m];
    for (int64_t n = n0; n < n1; n += 4) {
      const int rows = int(std::min<int64_t>(4, n1 - n));
      const uint8_t* w[4];
      for (int r = 0; r < 4; ++r) w[r] = W + (n + std::min(r, rows - 1)) * KB;
      __m512 a[4][2];
      int64_t pc[4] = {0, 0, 0, 0};
      for (int r = 0; r < 4; ++r) a[r][0] = a[r][1] = _mm512_setzero_ps();
      for (int64_t j = 0; j < K4; ++j) {
        if ((j & 15) == 0) prefetch_ahead(w, KB, 4 * j);
        __m512 xa = _mm512_loadu_ps(xm + 32 * j);
        __m512 xb = _mm512_loadu_ps(xm + 32 * j + 16);
        for (int r = 0; r < 4; ++r) {
          uint32_t b;
          std::memcpy(&b, w[r] + 4 * j, 4);
          pc[r] += __builtin_popcount(b);
          a[r][0] = _mm512_mask_add_ps(a[r][0], (__mmask16)(b & 0xFFFFu), a[r][0], xa);
          a[r][1] = _mm512_mask_add_ps(a[r][1], (__mmask16)(b >> 16), a[r][1], xb);
        }
      }
      for (int64_t j = 4 * K4; j < KB; ++j) {
        __m512 xv = _mm512_loadu_ps(xm + 8 * j);
        for (int r = 0; r < 4; ++r) {
          pc[r] += __builtin_popcount(w[r][j]);
          a[r][0] = _mm512_mask_add_ps(a[r][0], (__mmask16)w[r][j], a[r][0], xv);
        }
      }
      for (int r = 0; r < rows; ++r) {
        const int64_t cnt = pc[r] - __builtin_popcount(w[r][KB - 1] & padmask);
        const double P = _mm512_reduce_add_ps(_mm512_add_ps(a[r][0], a[r][1]));
        y[m * ldy + n + r] = float(2.0 * P - S + c * double(2 * cnt - K));
      }
    }
  }
}

// ---------------------------------------------------------------- binary: AVX512-BF16 dot products
// vdpbf16ps does 32 bf16 multiply-adds into 16 fp32 lanes per instruction.  The weights become
// ±1 bf16 with one masked blend per 32 columns (mask loaded straight from the packed bytes), and x
// is split exactly into NP bf16 parts (x = hi + mid + lo): NP = 1 for bf16 inputs, 2 for fp16,
// 3 for fp32.  Products with ±1 are exact and lanes accumulate in fp32, so the result is as exact
// as fp32 accumulation of x itself.

BF16_TARGET inline __m512 dp(__m512 acc, __m512i xv, __m512i wv) {
  return _mm512_dpbf16_ps(acc, (__m512bh)xv, (__m512bh)wv);
}

// 64 columns of 4 rows (bits[r]: 64 sign bits of row r); a lambda would lose the target attribute.
// ±1 weights without mask registers: the 32 bits of a block are broadcast to every dword, so each
// even word holds bits 0-15 and each odd word bits 16-31; vpsllvw moves bit d (word 2d) / bit 16+d
// (word 2d+1) to bit 15, and one vpternlogd makes 0x3F80 | (~bit15 & 0x8000) = bf16 ±1.  The x
// parts are stored in the matching order (word 2d = column d, word 2d+1 = column 16+d).
template <int NP>
BF16_TARGET inline void bf16dp_step(const uint16_t* const* xm, int64_t col, const uint64_t* bits,
                                    __m512 (*a)[2], __m512i shifts) {
  const __m512i pos = _mm512_set1_epi16(0x3F80), sgn = _mm512_set1_epi16(int16_t(0x8000));
  __m512i xa[NP], xb[NP];
  for (int p = 0; p < NP; ++p) {
    xa[p] = _mm512_loadu_si512(xm[p] + col);
    xb[p] = _mm512_loadu_si512(xm[p] + col + 32);
  }
  for (int r = 0; r < 4; ++r) {
    __m512i va = _mm512_sllv_epi16(_mm512_set1_epi32(int(uint32_t(bits[r]))), shifts);
    __m512i vb = _mm512_sllv_epi16(_mm512_set1_epi32(int(uint32_t(bits[r] >> 32))), shifts);
    __m512i wa = _mm512_ternarylogic_epi32(va, pos, sgn, 0xCE);
    __m512i wb = _mm512_ternarylogic_epi32(vb, pos, sgn, 0xCE);
    for (int p = 0; p < NP; ++p) {
      a[r][0] = dp(a[r][0], xa[p], wa);
      a[r][1] = dp(a[r][1], xb[p], wb);
    }
  }
}

template <int NP>
BF16_TARGET void bin_bf16dp(const uint16_t* xparts, int64_t pstride, int64_t M, int64_t ldx,
                            const uint8_t* W, int64_t KB, int64_t n0, int64_t n1, float* y,
                            int64_t ldy) {
  __m512i shifts;  // word 2d and 2d+1: shift 15 - d
  {
    alignas(64) uint16_t sh[32];
    for (int i = 0; i < 32; ++i) sh[i] = uint16_t(15 - i / 2);
    shifts = _mm512_load_si512(sh);
  }
  const int64_t K8 = KB / 8;                   // 64 columns per step
  const int64_t rem = KB - 8 * K8;              // 0..7 trailing bytes
  for (int64_t m = 0; m < M; ++m) {
    const uint16_t* xm[NP];
    for (int p = 0; p < NP; ++p) xm[p] = xparts + p * pstride + m * ldx;
    for (int64_t n = n0; n < n1; n += 4) {
      const int rows = int(std::min<int64_t>(4, n1 - n));
      const uint8_t* w[4];
      for (int r = 0; r < 4; ++r) w[r] = W + (n + std::min(r, rows - 1)) * KB;
      __m512 a[4][2];
      for (int r = 0; r < 4; ++r) a[r][0] = a[r][1] = _mm512_setzero_ps();
      uint64_t bits[4];
      for (int64_t j = 0; j < K8; ++j) {
        if ((j & 7) == 0) prefetch_ahead(w, KB, 8 * j);
        for (int r = 0; r < 4; ++r) std::memcpy(&bits[r], w[r] + 8 * j, 8);
        bf16dp_step<NP>(xm, 64 * j, bits, a, shifts);
      }
      if (rem) {  // x is zero past in_features, so the bits there do not matter
        for (int r = 0; r < 4; ++r) {
          bits[r] = 0;
          std::memcpy(&bits[r], w[r] + 8 * K8, rem);
        }
        bf16dp_step<NP>(xm, 64 * K8, bits, a, shifts);
      }
      for (int r = 0; r < rows; ++r)
        y[m * ldy + n + r] = _mm512_reduce_add_ps(_mm512_add_ps(a[r][0], a[r][1]));
    }
  }
}

template void bin_bf16dp<1>(const uint16_t*, int64_t, int64_t, int64_t, const uint8_t*, int64_t,
                            int64_t, int64_t, float*, int64_t);
template void bin_bf16dp<2>(const uint16_t*, int64_t, int64_t, int64_t, const uint8_t*, int64_t,
                            int64_t, int64_t, float*, int64_t);
template void bin_bf16dp<3>(const uint16_t*, int64_t, int64_t, int64_t, const uint8_t*, int64_t,
                            int64_t, int64_t, float*, int64_t);

// ---------------------------------------------------------------- binary: int8 activations, VNNI
// The int8-activation math of onebit_cpu.h (algo=i8, not exact; the same integers as the AVX2
// table kernel and the scalar version) with AVX512-VNNI: per 64 columns the 64 sign bits are the
// byte mask of a zero-masked move of q (vmovdqu8 {z}), and vpdpbusd(u_b, that) adds u_b times the
// kept bytes, four at a time, into 16 int32 lanes: 3 instructions per 64 weights and no float work
// until the row ends (y = 2 S sum_b u_b P_b - C).  Two accumulators per row, 4 rows per x load.
// Bounds: a lane adds at most 255 * 127 * 4 per 64 columns, so in_features up to 2^20 stay exact.
inline uint64_t load_u64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

VNNI_TARGET void bin_i8_vnni(const QuantX& qx, int64_t m0, int64_t M, const uint8_t* W,
                             int64_t KB, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  constexpr int64_t BB = QB / 8;                 // bit bytes per block (16)
  const int64_t nb = qx.nb, full = KB / BB;      // blocks whose 16 bit bytes are all in the row
  for (int64_t m = m0; m < m0 + M; ++m) {
    const int8_t* q = qx.q.data() + m * qx.ldq;
    const uint8_t* u = qx.u.data() + m * nb;
    const double S2 = 2.0 * double(qx.S[m]);
    for (int64_t n = n0; n < n1; n += 4) {
      const int rows = int(std::min<int64_t>(4, n1 - n));
      const uint8_t* w[4];
      for (int r = 0; r < 4; ++r) w[r] = W + (n + std::min(r, rows - 1)) * KB;
      // eight named accumulators (an array of them made GCC copy each one twice per block)
      __m512i a00 = _mm512_setzero_si512(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00,
              a30 = a00, a31 = a00;
      for (int64_t b = 0; b < full; ++b) {
        const __m512i xa = _mm512_loadu_si512(q + b * QB);
        const __m512i xb = _mm512_loadu_si512(q + b * QB + 64);
        const __m512i ub = _mm512_set1_epi8(char(u[b]));
        if ((b & 3) == 0) prefetch_ahead(w, KB, b * BB);
        const int64_t o = b * BB;
        a00 = _mm512_dpbusd_epi32(a00, ub, _mm512_maskz_mov_epi8(load_u64(w[0] + o), xa));
        a01 = _mm512_dpbusd_epi32(a01, ub, _mm512_maskz_mov_epi8(load_u64(w[0] + o + 8), xb));
        a10 = _mm512_dpbusd_epi32(a10, ub, _mm512_maskz_mov_epi8(load_u64(w[1] + o), xa));
        a11 = _mm512_dpbusd_epi32(a11, ub, _mm512_maskz_mov_epi8(load_u64(w[1] + o + 8), xb));
        a20 = _mm512_dpbusd_epi32(a20, ub, _mm512_maskz_mov_epi8(load_u64(w[2] + o), xa));
        a21 = _mm512_dpbusd_epi32(a21, ub, _mm512_maskz_mov_epi8(load_u64(w[2] + o + 8), xb));
        a30 = _mm512_dpbusd_epi32(a30, ub, _mm512_maskz_mov_epi8(load_u64(w[3] + o), xa));
        a31 = _mm512_dpbusd_epi32(a31, ub, _mm512_maskz_mov_epi8(load_u64(w[3] + o + 8), xb));
      }
      __m512i a[4][2] = {{a00, a01}, {a10, a11}, {a20, a21}, {a30, a31}};
      if (full < nb) {  // last, partial block: q is zero past in_features, bits there do not matter
        const int64_t b = full, left = KB - b * BB;
        const __m512i xa = _mm512_loadu_si512(q + b * QB);
        const __m512i xb = _mm512_loadu_si512(q + b * QB + 64);
        const __m512i ub = _mm512_set1_epi8(char(u[b]));
        for (int r = 0; r < 4; ++r) {
          uint64_t lo = 0, hi = 0;
          std::memcpy(&lo, w[r] + b * BB, std::min<int64_t>(8, left));
          if (left > 8) std::memcpy(&hi, w[r] + b * BB + 8, left - 8);
          a[r][0] = _mm512_dpbusd_epi32(a[r][0], ub, _mm512_maskz_mov_epi8(lo, xa));
          a[r][1] = _mm512_dpbusd_epi32(a[r][1], ub, _mm512_maskz_mov_epi8(hi, xb));
        }
      }
      for (int r = 0; r < rows; ++r) {
        const __m512i t = _mm512_add_epi32(a[r][0], a[r][1]);  // |lane| < 2^31 (see above)
        const int64_t P = _mm512_reduce_add_epi64(_mm512_add_epi64(
            _mm512_cvtepi32_epi64(_mm512_castsi512_si256(t)), _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(t, 1))));
        y[(m - m0) * ldy + n + r] = float(S2 * double(P) - double(qx.c[m]));
      }
    }
  }
}

// ---------------------------------------------------------------- binary: expand to ±1 (GEMM path)
// rows [n0, n1) -> buf [n1 - n0, ldb] (ldb >= 8 KB) of ±1 in a 16-bit type (bf16: 0x3F80 / 0xBF80,
// fp16: 0x3C00 / 0xBC00) or fp32, one masked blend per 32 (16-bit) / 16 (fp32) columns, the mask
// loaded straight from the packed bytes; bit 1 -> +1, bit 0 -> -1.
AVX512_TARGET void expand_bin16_avx512(const uint8_t* W, int64_t KB, int64_t n0, int64_t n1,
                                       uint16_t* buf, int64_t ldb, uint16_t one) {
  const __m512i pos = _mm512_set1_epi16(int16_t(one)), neg = _mm512_set1_epi16(int16_t(one | 0x8000u));
  const int64_t K4 = KB / 4;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* w = W + n * KB;
    uint16_t* o = buf + (n - n0) * ldb;
    for (int64_t j = 0; j < K4; ++j) {
      uint32_t b;
      std::memcpy(&b, w + 4 * j, 4);
      _mm512_storeu_si512(o + 32 * j, _mm512_mask_blend_epi16((__mmask32)b, neg, pos));
    }
    for (int64_t j = 4 * K4; j < KB; ++j)  // tail bytes: 8 columns each
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 8 * j),
                       _mm512_castsi512_si128(_mm512_mask_blend_epi16((__mmask32)w[j], neg, pos)));
  }
}

AVX512_TARGET void expand_bin_f32_avx512(const uint8_t* W, int64_t KB, int64_t n0, int64_t n1,
                                         float* buf, int64_t ldb) {
  const __m512 pos = _mm512_set1_ps(1.f), neg = _mm512_set1_ps(-1.f);
  const int64_t K2 = KB / 2;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* w = W + n * KB;
    float* o = buf + (n - n0) * ldb;
    for (int64_t j = 0; j < K2; ++j) {
      uint16_t b;
      std::memcpy(&b, w + 2 * j, 2);
      _mm512_storeu_ps(o + 16 * j, _mm512_mask_blend_ps((__mmask16)b, neg, pos));
    }
    if (KB & 1)
      _mm256_storeu_ps(o + 8 * (KB - 1),
                       _mm512_castps512_ps256(_mm512_mask_blend_ps((__mmask16)w[KB - 1], neg, pos)));
  }
}

// ---------------------------------------------------------------- ternary: AVX-512
// 16 codes = 32 bits; pext splits them into the 16 low and 16 high bits of the codes.
// code 2 (+1): hi set; code 0 (-1): neither set; code 1 (0): only lo set.  (Code 3 is never
// written by the packer; here it counts as +1.)
AVX512_TARGET void ter_avx512(const float* x, int64_t M, int64_t ldx, const uint8_t* W,
                              int64_t KB, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  const int64_t K4 = KB / 4;  // 16 columns per step
  const auto& T = tables().ter;
  for (int64_t m = 0; m < M; ++m) {
    const float* xm = x + m * ldx;
    for (int64_t n = n0; n < n1; n += 2) {
      const int rows = (n + 1 < n1) ? 2 : 1;
      __m512 p[2], q[2];
      for (int r = 0; r < 2; ++r) p[r] = q[r] = _mm512_setzero_ps();
      for (int64_t j = 0; j < K4; ++j) {
        __m512 xv = _mm512_loadu_ps(xm + 16 * j);
        for (int r = 0; r < rows; ++r) {
          uint32_t b;
          std::memcpy(&b, W + (n + r) * KB + 4 * j, 4);
          uint32_t lo = _pext_u32(b, 0x55555555u), hi = _pext_u32(b, 0xAAAAAAAAu);
          p[r] = _mm512_mask_add_ps(p[r], (__mmask16)hi, p[r], xv);
          q[r] = _mm512_mask_add_ps(q[r], (__mmask16)(~(hi | lo) & 0xFFFFu), q[r], xv);
        }
      }
      for (int r = 0; r < rows; ++r) {
        const uint8_t* w = W + (n + r) * KB;
        float s = _mm512_reduce_add_ps(_mm512_sub_ps(p[r], q[r]));
        for (int64_t j = 4 * K4; j < KB; ++j)
          for (int i = 0; i < 4; ++i) s += T[w[j]][i] * xm[4 * j + i];
        y[m * ldy + n + r] = s;
      }
    }
  }
}
}  // namespace onebit_packed
