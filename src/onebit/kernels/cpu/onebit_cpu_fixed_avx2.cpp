// fxlut on AVX2 (algo=fxlut; the exact default on AVX2 CPUs for every batch size): the fixed-point
// x of onebit_cpu_fixed.cpp (X = round(x / 2^e), |X| <= FX_LIMIT < 2^23; sum_k s_k x_k =
// 2^e (2 P - T) with P, T exact integers, one rounding per output), with P found by lookups in int32
// tables, as the AVX-512 fxlut does, sized for 256-bit registers.
//
// vpermd on a ymm picks one of 8 int32 entries by the low 3 bits of each index lane, so the tables
// here cover 3 columns: per x row and per 32 columns (dword q of a row's bits), 11 tables of 8
// entries, T_{q,h}[n] = sum_{i<3} bit_i(n) X_{32q + 3h + i} for h < 10 and, for the last 2 columns,
// T_{q,10}[n] = bit_0(n) X_{32q+30} + bit_1(n) X_{32q+31} (indexed by the top 2 bits only).
// The bits come from the same transposed copy as the AVX-512 fxlut (BITS_DWORDS: tiles of 16 rows,
// 4 bytes of a row together): one 32-byte load holds dword q of 8 rows, one row per lane, and a
// shift by 3h brings group h's 3 bits to the bottom of each lane; vpermd ignores the rest.  Per 32
// columns x 8 rows: 1 load, 10 shifts, 11 vpermd (their tables read from L1), 11 adds, against 32
// fp32 FMAs + 8 table loads for the ±1-table kernel and 32 FMAs for a dense fp32 GEMM.
// Lane bounds: |T| <= 3 FX_LIMIT, a dword adds at most 32 FX_LIMIT, and 4 dwords (128 columns,
// 128 FX_LIMIT < 2^31) are summed in int32 before being widened into int64.  32 rows (2 tiles,
// 4 ymm of bits) share each table read.
#include "onebit_cpu.h"

#include <immintrin.h>

#include <memory>

namespace onebit_packed {
namespace {

constexpr int64_t GROUPS = 11;  // tables per 32 columns

AVX2_TARGET void build_tables(const int32_t* X, int64_t nq, int32_t* tab) {
  const __m256i m0 = _mm256_setr_epi32(0, -1, 0, -1, 0, -1, 0, -1);
  const __m256i m1 = _mm256_setr_epi32(0, 0, -1, -1, 0, 0, -1, -1);
  const __m256i m2 = _mm256_setr_epi32(0, 0, 0, 0, -1, -1, -1, -1);
  for (int64_t q = 0; q < nq; ++q) {
    const int32_t* x = X + 32 * q;
    int32_t* t = tab + q * GROUPS * 8;
    for (int h = 0; h < 10; ++h) {
      __m256i v = _mm256_and_si256(_mm256_set1_epi32(x[3 * h]), m0);
      v = _mm256_add_epi32(v, _mm256_and_si256(_mm256_set1_epi32(x[3 * h + 1]), m1));
      v = _mm256_add_epi32(v, _mm256_and_si256(_mm256_set1_epi32(x[3 * h + 2]), m2));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(t + 8 * h), v);
    }
    const __m256i v = _mm256_add_epi32(_mm256_and_si256(_mm256_set1_epi32(x[30]), m0),
                                       _mm256_and_si256(_mm256_set1_epi32(x[31]), m1));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(t + 80), v);
  }
}

AVX2_TARGET inline __m256i look(const int32_t* t, __m256i idx) {
  return _mm256_permutevar8x32_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(t)), idx);
}

// the 11 lookups of dword q of 8 rows (v), summed as a tree
AVX2_TARGET inline __m256i lookups(__m256i v, const int32_t* t) {
  const __m256i a = _mm256_add_epi32(look(t, v), look(t + 8, _mm256_srli_epi32(v, 3)));
  const __m256i b = _mm256_add_epi32(look(t + 16, _mm256_srli_epi32(v, 6)), look(t + 24, _mm256_srli_epi32(v, 9)));
  const __m256i c = _mm256_add_epi32(look(t + 32, _mm256_srli_epi32(v, 12)), look(t + 40, _mm256_srli_epi32(v, 15)));
  const __m256i d = _mm256_add_epi32(look(t + 48, _mm256_srli_epi32(v, 18)), look(t + 56, _mm256_srli_epi32(v, 21)));
  const __m256i e = _mm256_add_epi32(look(t + 64, _mm256_srli_epi32(v, 24)), look(t + 72, _mm256_srli_epi32(v, 27)));
  const __m256i f = look(t + 80, _mm256_srli_epi32(v, 30));
  return _mm256_add_epi32(_mm256_add_epi32(_mm256_add_epi32(a, b), _mm256_add_epi32(c, d)), _mm256_add_epi32(e, f));
}

AVX2_TARGET inline void widen(__m256i& a, __m256i& lo, __m256i& hi) {
  lo = _mm256_add_epi64(lo, _mm256_cvtepi32_epi64(_mm256_castsi256_si128(a)));
  hi = _mm256_add_epi64(hi, _mm256_cvtepi32_epi64(_mm256_extracti128_si256(a, 1)));
  a = _mm256_setzero_si256();
}

// 32 rows (tiles s0, s1 of 16) against one x row's tables: P of each row into P[0..31].  `next0`,
// `next1`: the tiles the next call reads (prefetched into L2; a prefetch never faults)
AVX2_TARGET void rows32(const uint8_t* s0, const uint8_t* s1, const uint8_t* next0, const uint8_t* next1,
                        const int32_t* tab, int64_t nq, int64_t* P) {
  __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
  __m256i l0 = a0, h0 = a0, l1 = a0, h1 = a0, l2 = a0, h2 = a0, l3 = a0, h3 = a0;
  for (int64_t q0 = 0; q0 < nq; q0 += 4) {
    for (int64_t q = q0; q < std::min(nq, q0 + 4); ++q) {
      _mm_prefetch(reinterpret_cast<const char*>(next0 + 64 * q), _MM_HINT_T1);
      _mm_prefetch(reinterpret_cast<const char*>(next1 + 64 * q), _MM_HINT_T1);
      const int32_t* t = tab + q * GROUPS * 8;
      a0 = _mm256_add_epi32(a0, lookups(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s0 + 64 * q)), t));
      a1 = _mm256_add_epi32(a1, lookups(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s0 + 64 * q + 32)), t));
      a2 = _mm256_add_epi32(a2, lookups(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s1 + 64 * q)), t));
      a3 = _mm256_add_epi32(a3, lookups(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s1 + 64 * q + 32)), t));
    }
    widen(a0, l0, h0);
    widen(a1, l1, h1);
    widen(a2, l2, h2);
    widen(a3, l3, h3);
  }
  auto* p = reinterpret_cast<__m256i*>(P);
  _mm256_storeu_si256(p, l0), _mm256_storeu_si256(p + 1, h0), _mm256_storeu_si256(p + 2, l1);
  _mm256_storeu_si256(p + 3, h1), _mm256_storeu_si256(p + 4, l2), _mm256_storeu_si256(p + 5, h2);
  _mm256_storeu_si256(p + 6, l3), _mm256_storeu_si256(p + 7, h3);
}

}  // namespace

AVX2_TARGET float fixed_amax_avx2(const float* x, int64_t n, bool& finite) {
  const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF)), inf = _mm256_set1_ps(INFINITY);
  __m256 mx = _mm256_setzero_ps(), bad = mx;
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    const __m256 a = _mm256_and_ps(_mm256_loadu_ps(x + k), absm);
    mx = _mm256_max_ps(mx, a);
    bad = _mm256_or_ps(bad, _mm256_cmp_ps(a, inf, _CMP_NLT_UQ));  // inf, or nan (unordered)
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, mx);
  float amax = 0.f;
  for (int i = 0; i < 8; ++i) amax = std::max(amax, lanes[i]);
  finite = _mm256_movemask_ps(bad) == 0;
  for (; k < n; ++k) {
    finite = finite && std::isfinite(x[k]);
    amax = std::max(amax, std::fabs(x[k]));
  }
  return amax;
}

AVX2_TARGET int64_t fixed_row_avx2(const float* x, int64_t n, float inv, int32_t* X) {
  const __m256 iv = _mm256_set1_ps(inv);
  int64_t T = 0, k = 0;
  while (k + 8 <= n) {
    __m256i s = _mm256_setzero_si256();  // 8 lanes x at most 128 values of |X| < 2^23: < 2^30
    for (int64_t stop = std::min(n - 7, k + 8 * 128); k < stop; k += 8) {
      const __m256i v = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + k), iv));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(X + k), v);
      s = _mm256_add_epi32(s, v);
    }
    alignas(32) int32_t lanes[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), s);
    for (int i = 0; i < 8; ++i) T += lanes[i];
  }
  for (; k < n; ++k) {
    X[k] = int32_t(std::nearbyint(x[k] * inv));
    T += X[k];
  }
  return T;
}

void bin_fx_lut_avx2(const FixedX& fx, int64_t M, const at::Tensor& packed, float* acc) {
  constexpr int64_t T16 = 16, UNIT = 32;  // rows per transposed tile / per pass
  const int64_t N = packed.size(0), KBp = fx.nb * (QB / 8), tiles = (N + T16 - 1) / T16;
  const at::Tensor R = transposed_bits(packed, KBp, BITS_DWORDS);
  const uint8_t* rp = R.data_ptr<uint8_t>();
  const int64_t nq = KBp / 4, per_row = nq * GROUPS * 8;  // X is zero past in_features (ldq = 32 nq)
  const int64_t units = (N + UNIT - 1) / UNIT, tile_bytes = KBp * T16;
  // blocks of x rows whose tables fit in ~512 KiB of L2 (a 5632-column row's are 62 KiB); within a
  // block each unit of 32 weight rows (KBp x 32 bytes: L1) serves every row of the block.  One
  // parallel region over (row block, unit), row-block-major: whole row blocks per thread in
  // prefill, a share of the units in decode; a thread builds the tables of each row block it
  // reaches (only those: bounded memory for long prefills).  A unit's packed bytes are counted at
  // half: about twice the work per byte of the AVX-512 fxlut.
  const int64_t MB = std::max<int64_t>(1, (512 * 1024) / (per_row * 4)), nmb = (M + MB - 1) / MB;
  at::parallel_for(0, nmb * units, par_grain(UNIT * KBp * std::min(M, MB) / 2, 1), [&](int64_t b, int64_t e) {
    alignas(32) int64_t P[UNIT];
    std::unique_ptr<int32_t[]> tabs(new int32_t[size_t(std::min(M, MB)) * per_row]);  // every entry is written
    int64_t built = -1;
    for (int64_t i = b; i < e; ++i) {
      const int64_t blk = i / units, m0 = blk * MB, m1 = std::min(M, m0 + MB), u = i % units;
      if (blk != built) {
        for (int64_t m = m0; m < m1; ++m) build_tables(fx.X.data() + m * fx.ldq, nq, tabs.get() + (m - m0) * per_row);
        built = blk;
      }
      const uint8_t* s0 = rp + std::min(tiles - 1, 2 * u) * tile_bytes;
      const uint8_t* s1 = rp + std::min(tiles - 1, 2 * u + 1) * tile_bytes;
      const int64_t rows = std::min(UNIT, N - u * UNIT);
      for (int64_t m = m0; m < m1; ++m) {
        // next: this unit again for the next x row, else the next unit
        const bool again = m + 1 < m1;
        rows32(s0, s1, again ? s0 : s0 + 2 * tile_bytes, again ? s1 : s1 + 2 * tile_bytes,
               tabs.get() + (m - m0) * per_row, nq, P);
        for (int64_t r = 0; r < rows; ++r)
          acc[m * N + u * UNIT + r] = float(fx.scale[m] * double(2 * P[r] - fx.T[m]));
      }
    }
  });
}

}  // namespace onebit_packed
