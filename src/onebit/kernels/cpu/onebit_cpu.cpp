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
//       AVX-512: 32 bits broadcast to all lanes, vpsllvd moves bit i to the sign bit of lane i,
//                t = (-x) ^ (that & signbit) in one vpternlogd, acc += t (no mask registers).
//                algo=2: mask-register variant (kmov + masked xor); algo=3: one masked add per 16
//                weights on centred x (2P - S); both kmov-bound and slower on this CPU (Zen 5).
//       AVX2:    a 256-entry table of ±1 vectors indexed by the byte, acc = fma(x, table[b], acc),
//                two accumulators per row (the default: fastest exact AVX2 path measured here);
//                algo=8/9: exact sign flip of x by xor / vblendvps from vpsllvd'd bits, no table.
//       int8:    (algo=6, any ISA, not exact) x quantized per block of 128 to int8, bits spread
//                to bytes (vpshufb + vpand + vpminub), vpmaddubsw + vpmaddwd; see bin_i8_avx2.
//       scalar:  the same table, one lane at a time (portable).
//       lut:     (algo=1, measured slower than the SIMD paths) T-MAC style: per x row, for every group of 8 activations
//                the 256 signed sums; each packed byte is then one table lookup.
//   * large batch (M >= mm_threshold): unpack a block of rows to ±1 in the input dtype and call
//     at::mm (MKL/oneDNN), i.e. the packed weight is expanded once per block, not per row.
//     AVX2 (default from AVX2_MM_THRESHOLD rows): tiles expanded to ±1 fp32 with SIMD (512 KiB,
//     L2-sized, below 128 rows; up to 64 MiB above), one fp32 GEMM per tile written in place.
//     mm_threshold < 0 = per-ISA default (AVX2: AVX2_MM_THRESHOLD; AVX-512, scalar: never).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace {

enum Isa : int64_t { ISA_SCALAR = 0, ISA_AVX2 = 1, ISA_AVX512 = 2 };
int64_t best_isa_raw();

bool has_bf16dp() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512bf16") && best_isa_raw() == 2;
#else
  return false;
#endif
}

int64_t best_isa() { return best_isa_raw(); }

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
const Tables& tables() {
  static const Tables t;
  return t;
}

inline float hsum_scalar(const float* v, int n) {
  float s = 0.f;
  for (int i = 0; i < n; ++i) s += v[i];
  return s;
}

// All direct kernels compute, for output rows [n0, n1) and every x row m:
//   y[m*ldy + n] = sum_k coef(W[n], k) * x[m*ldx + k]
// x rows are fp32, zero padded up to ldx >= 8*KB + 32 (binary) / 4*KB + 32 (ternary).

// ---------------------------------------------------------------- binary: portable
void bin_scalar(const float* x, int64_t M, int64_t ldx, const uint8_t* W, int64_t KB, int64_t n0,
                int64_t n1, float* y, int64_t ldy) {
  const auto& T = tables().bin;
  for (int64_t m = 0; m < M; ++m) {
    const float* xm = x + m * ldx;
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* w = W + n * KB;
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t j = 0; j < KB; ++j) {
        const float* c = T[w[j]];
        const float* xv = xm + 8 * j;
        for (int i = 0; i < 8; ++i) acc[i] += c[i] * xv[i];
      }
      y[m * ldy + n] = hsum_scalar(acc, 8);
    }
  }
}

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
      int64_t j = 0;
      for (; j + 2 <= KB; j += 2) {
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
#define AVX2_TARGET __attribute__((target("avx2,fma")))

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

// ---------------------------------------------------------------- binary: int8 activations
// (algo=i8, not exact).  x (after x*g, rounded as the reference) is quantized per block of
// QB = 128 columns: s_b = max|x_b| / 127, q = round_half_even(x / s_b) in [-127, 127] (0 where
// s_b = 0).  With P_b = sum of q over the +1 columns of block b and S_b = sum of q over block b,
//   y = sum_b s_b (2 P_b - S_b) = 2 sum_b s_b P_b - C,   C = sum_b s_b S_b (once per x row);
// every P_b is an exact integer.  AVX2: per 32 weights, the 4 bit bytes are spread to 32 bytes
// (vpshufb), masked to one bit per byte (vpand) and clamped to 0/1 (vpminub); vpmaddubsw(0/1, q)
// adds pairs into int16 (4 chunks stay below 1016), vpmaddwd per block, cvt + fma by s_b.
constexpr int64_t QB = 128;

struct QuantX {
  std::vector<int8_t> q;  // [M, ldq], zero padded
  std::vector<float> s;   // [M, nb]
  std::vector<float> c;   // [M]: sum_b s_b S_b
  int64_t ldq = 0, nb = 0;
};

QuantX quantize_x(const float* xs, int64_t M, int64_t ldx, int64_t K) {
  QuantX r;
  r.nb = (K + QB - 1) / QB;
  r.ldq = r.nb * QB + 32;
  r.q.assign(M * r.ldq, 0);
  r.s.assign(M * r.nb, 0.f);
  r.c.assign(M, 0.f);
  at::parallel_for(0, M, 4, [&](int64_t b0, int64_t e0) {
    for (int64_t m = b0; m < e0; ++m) {
      const float* xr = xs + m * ldx;
      double c = 0;
      for (int64_t b = 0; b < r.nb; ++b) {
        const int64_t k0 = b * QB, k1 = std::min(K, k0 + QB);
        float amax = 0.f;
        for (int64_t k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(xr[k]));
        const float s = amax / 127.0f;
        r.s[m * r.nb + b] = s;
        if (s == 0.f) continue;
        int64_t sum = 0;
        for (int64_t k = k0; k < k1; ++k) {
          float v = std::nearbyint(xr[k] / s);
          v = std::min(127.f, std::max(-127.f, v));
          r.q[m * r.ldq + k] = int8_t(v);
          sum += int64_t(v);
        }
        c += double(s) * double(sum);
      }
      r.c[m] = float(c);
    }
  });
  return r;
}

void bin_i8_scalar(const QuantX& qx, int64_t m0, int64_t M, const uint8_t* W, int64_t KB,
                   int64_t n0, int64_t n1, float* y, int64_t ldy) {
  for (int64_t m = m0; m < m0 + M; ++m) {
    const int8_t* q = qx.q.data() + m * qx.ldq;
    const float* s = qx.s.data() + m * qx.nb;
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* w = W + n * KB;
      float acc = 0.f;
      for (int64_t b = 0; b < qx.nb; ++b) {
        int32_t p = 0;
        for (int64_t j = b * QB / 8; j < std::min(KB, (b + 1) * QB / 8); ++j)
          for (int i = 0; i < 8; ++i)
            if ((w[j] >> i) & 1) p += q[8 * j + i];
        acc += s[b] * float(p);
      }
      y[(m - m0) * ldy + n] = 2.f * acc - qx.c[m];
    }
  }
}

AVX2_TARGET void bin_i8_avx2(const QuantX& qx, int64_t m0, int64_t M, const uint8_t* W,
                             int64_t KB, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  const __m256i idx = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                       2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i bm = _mm256_set1_epi64x(int64_t(0x8040201008040201ull));
  const __m256i one8 = _mm256_set1_epi8(1), one16 = _mm256_set1_epi16(1);
  const int64_t nb = qx.nb, full = KB / (QB / 8);  // blocks whose 16 bit bytes are all in the row
  for (int64_t m = m0; m < m0 + M; ++m) {
    const int8_t* q = qx.q.data() + m * qx.ldq;
    const float* s = qx.s.data() + m * nb;
    for (int64_t n = n0; n < n1; n += 4) {
      const int rows = int(std::min<int64_t>(4, n1 - n));
      const uint8_t* w[4];
      for (int r = 0; r < 4; ++r) w[r] = W + (n + std::min(r, rows - 1)) * KB;
      __m256 f[4];
      for (int r = 0; r < 4; ++r) f[r] = _mm256_setzero_ps();
      alignas(16) uint8_t tail[4][QB / 8];
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* wb[4];
        for (int r = 0; r < 4; ++r) {
          if (b < full) {
            wb[r] = w[r] + b * (QB / 8);
          } else {  // last, partial block: zero-padded copy (q is zero there anyway)
            std::memset(tail[r], 0, QB / 8);
            std::memcpy(tail[r], w[r] + b * (QB / 8), KB - b * (QB / 8));
            wb[r] = tail[r];
          }
        }
        __m256i a[4];
        for (int r = 0; r < 4; ++r) a[r] = _mm256_setzero_si256();
        for (int c = 0; c < QB / 32; ++c) {
          const __m256i xq = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + b * QB + 32 * c));
          for (int r = 0; r < 4; ++r) {
            uint32_t bits;
            std::memcpy(&bits, wb[r] + 4 * c, 4);
            __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32(int(bits)), idx);
            v = _mm256_min_epu8(_mm256_and_si256(v, bm), one8);
            a[r] = _mm256_add_epi16(a[r], _mm256_maddubs_epi16(v, xq));
          }
        }
        const __m256 sv = _mm256_set1_ps(s[b]);
        for (int r = 0; r < 4; ++r)
          f[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(a[r], one16)), sv, f[r]);
      }
      for (int r = 0; r < rows; ++r) y[(m - m0) * ldy + n + r] = 2.f * hsum256(f[r]) - qx.c[m];
    }
  }
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

// ---------------------------------------------------------------- binary: AVX-512
#define AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,bmi2,fma")))

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
#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,bmi2,fma")))

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

// ---------------------------------------------------------------- binary: T-MAC style LUT
// table[j][b] = sum_i (bit i of b ? +1 : -1) * x[8j+i]; built by doubling (256 adds per group).
void bin_build_lut(const float* xm, int64_t KB, float* lut) {
  for (int64_t j = 0; j < KB; ++j) {
    const float* xv = xm + 8 * j;
    float* t = lut + 256 * j;
    float s = 0.f;
    for (int i = 0; i < 8; ++i) s -= xv[i];
    t[0] = s;
    for (int i = 0; i < 8; ++i) {
      const int half = 1 << i;
      const float d = 2.f * xv[i];
      for (int b = 0; b < half; ++b) t[half + b] = t[b] + d;
    }
  }
}

void bin_lut_rows(const float* lut, const uint8_t* W, int64_t KB, int64_t n0, int64_t n1,
                  float* y) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) {
    const uint8_t* w0 = W + n * KB;
    const uint8_t* w1 = w0 + KB;
    const uint8_t* w2 = w1 + KB;
    const uint8_t* w3 = w2 + KB;
    float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
    for (int64_t j = 0; j < KB; ++j) {
      const float* t = lut + 256 * j;
      s0 += t[w0[j]];
      s1 += t[w1[j]];
      s2 += t[w2[j]];
      s3 += t[w3[j]];
    }
    y[n] = s0, y[n + 1] = s1, y[n + 2] = s2, y[n + 3] = s3;
  }
  for (; n < n1; ++n) {
    const uint8_t* w0 = W + n * KB;
    float s0 = 0.f;
    for (int64_t j = 0; j < KB; ++j) s0 += lut[256 * j + w0[j]];
    y[n] = s0;
  }
}

// ---------------------------------------------------------------- ternary: portable
void ter_scalar(const float* x, int64_t M, int64_t ldx, const uint8_t* W, int64_t KB, int64_t n0,
                int64_t n1, float* y, int64_t ldy) {
  const auto& T = tables().ter;
  for (int64_t m = 0; m < M; ++m) {
    const float* xm = x + m * ldx;
    for (int64_t n = n0; n < n1; ++n) {
      const uint8_t* w = W + n * KB;
      float acc[4] = {0, 0, 0, 0};
      for (int64_t j = 0; j < KB; ++j) {
        const float* c = T[w[j]];
        const float* xv = xm + 4 * j;
        for (int i = 0; i < 4; ++i) acc[i] += c[i] * xv[i];
      }
      y[m * ldy + n] = hsum_scalar(acc, 4);
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

// ----------------------------------------------------------------------------------------------
using RowKernel = void (*)(const float*, int64_t, int64_t, const uint8_t*, int64_t, int64_t,
                           int64_t, float*, int64_t);

// algo codes (kernels/dispatch.py _ALGO): 0 default, 1 lut, 2 kmask, 3 psum, 4 shift, 5 bf16dp,
// 6 i8 (int8 activations), 7 table (AVX2 ±1 table + FMA: the AVX2 default), 8 xor / 9 blend
// (AVX2 sign flip by xor / by vblendvps)
constexpr int64_t ALGO_I8 = 6, ALGO_XOR = 8, ALGO_BLEND = 9;
// mm_threshold < 0 (auto): batch rows from which AVX2 expands tiles and calls a GEMM (measured,
// docs/kernels.md); AVX-512 and scalar never do unless asked
constexpr int64_t AVX2_MM_THRESHOLD = 16, NEVER_MM = int64_t(1) << 40;
constexpr int64_t AVX2_TILE_BYTES = 512 * 1024;  // expanded fp32 tile: fits L2

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

// weights -> ±1 / {-1,0,1} in the activation dtype, rows [n0, n1), into buf [n1-n0, KB*per]
template <typename T>
void unpack_rows(const uint8_t* W, int64_t KB, int64_t n0, int64_t n1, bool ternary, T* buf) {
  const int per = ternary ? 4 : 8;
  at::parallel_for(n0, n1, 16, [&](int64_t b, int64_t e) {
    T lut[256][8];
    for (int v = 0; v < 256; ++v)
      for (int i = 0; i < per; ++i)
        lut[v][i] = static_cast<T>(ternary ? tables().ter[v][i] : tables().bin[v][i]);
    for (int64_t n = b; n < e; ++n) {
      const uint8_t* w = W + n * KB;
      T* o = buf + (n - n0) * KB * per;
      for (int64_t j = 0; j < KB; ++j) std::memcpy(o + j * per, lut[w[j]], sizeof(T) * per);
    }
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
void blocked(int64_t M, int64_t N, const F& f) {
  at::parallel_for(0, (N + 15) / 16, 4, [&](int64_t b, int64_t e) {
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
  if (mm_threshold < 0) mm_threshold = use == ISA_AVX2 && !ternary ? AVX2_MM_THRESHOLD : NEVER_MM;
  if (M >= mm_threshold && !ternary && use == ISA_AVX2) {
    // batched, AVX2: tiles of weight rows expanded to ±1 fp32 (sized to stay in L2), one fp32
    // GEMM per tile (MKL/oneDNN); x is already rounded as the reference, the result is rounded
    // to the input dtype by the epilogue
    const int64_t kp = ((K + 15) / 16) * 16, ldb = std::max(kp, 8 * KB);
    // tile: 512 KiB (stays in L2 while a small batch uses it); from 128 rows up to 64 MiB (one
    // GEMM for most layers: 128-row tiles measured ~10 % slower than one GEMM at 512 rows);
    // ONEBIT_CPU_TILE_BYTES overrides, for measurements
    const char* te = std::getenv("ONEBIT_CPU_TILE_BYTES");
    const int64_t tile_bytes = te ? std::max<int64_t>(1, std::atoll(te)) : M >= 128 ? 128 * AVX2_TILE_BYTES
                                                                                   : AVX2_TILE_BYTES;
    const int64_t NB = std::max<int64_t>(16, std::min<int64_t>(N, (tile_bytes / (4 * ldb)) / 16 * 16));
    at::Tensor xt = xs.narrow(1, 0, K);
    at::Tensor wbuf = at::empty({std::min(NB, N), ldb}, x.options().dtype(at::kFloat));
    for (int64_t n0 = 0; n0 < N; n0 += NB) {
      const int64_t n1 = std::min(N, n0 + NB);
      float* wp = wbuf.data_ptr<float>();
      at::parallel_for(n0, n1, 8, [&](int64_t b, int64_t e) {
        expand_bin_f32_avx2(W, KB, b, e, wp + (b - n0) * ldb, ldb);
      });
      at::Tensor t = acc.narrow(1, n0, n1 - n0);  // row stride N: BLAS writes it in place (ldc)
      at::mm_out(t, xt, wbuf.narrow(0, 0, n1 - n0).narrow(1, 0, K).t());
    }
  } else if (M >= mm_threshold) {
    // batched: expand blocks of weight rows in the activation dtype, one GEMM per block
    const int64_t NB = 1024;
    at::Tensor xt = xs.narrow(1, 0, K).to(dt);
    at::Tensor wbuf = at::empty({std::min(NB, N), KB * per}, x.options());
    for (int64_t n0 = 0; n0 < N; n0 += NB) {
      const int64_t n1 = std::min(N, n0 + NB);
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dt, "onebit_unpack", [&] {
        unpack_rows<scalar_t>(W, KB, n0, n1, ternary, wbuf.data_ptr<scalar_t>());
      });
      at::Tensor wb = wbuf.narrow(0, 0, n1 - n0).narrow(1, 0, K);
      acc.narrow(1, n0, n1 - n0).copy_(at::mm(xt, wb.t()));
    }
  } else {
    const float* xp = xs.data_ptr<float>();
    float* ap = acc.data_ptr<float>();
    // bf16 dot products: default for bf16/fp16 inputs (1-2 parts); for fp32 (3 parts) the
    // shift kernel measured faster here, so only on request (algo=5)
    if (!ternary && ((algo == 0 && dt != at::kFloat) || algo == 5) && use == ISA_AVX512 &&
        has_bf16dp()) {
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
      blocked(M, N, [&](int64_t m0, int64_t mb, int64_t r0, int64_t r1) {
        fn(pp + m0 * ldp, M * ldp, mb, ldp, W, KB, r0, r1, ap + m0 * N, N);
      });
    } else if (!ternary && algo == ALGO_I8) {
      const QuantX qx = quantize_x(xp, M, ldx, K);
      blocked(M, N, [&](int64_t m0, int64_t mb, int64_t r0, int64_t r1) {
        if (use == ISA_SCALAR)
          bin_i8_scalar(qx, m0, mb, W, KB, r0, r1, ap + m0 * N, N);
        else
          bin_i8_avx2(qx, m0, mb, W, KB, r0, r1, ap + m0 * N, N);
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
      at::parallel_for(0, (N + 15) / 16, 4, [&](int64_t b, int64_t e) {
        bin_avx512_psum(xcp, cs.data(), ss.data(), M, ldx, W, KB, K, 16 * b, std::min(N, 16 * e), ap, N);
      });
    } else if (!ternary && algo == 2 && use == ISA_AVX512) {
      at::parallel_for(0, (N + 15) / 16, 4, [&](int64_t b, int64_t e) {
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
      blocked(M, N, [&](int64_t m0, int64_t mb, int64_t r0, int64_t r1) {
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
  m.def("binary_linear", &binary_linear, "packed 1-bit linear (x, packed, g, h, in, isa, mm_threshold, algo)");
  m.def("ternary_linear", &ternary_linear, "packed ternary linear (x, packed, scale, in, isa, mm_threshold)");
}
