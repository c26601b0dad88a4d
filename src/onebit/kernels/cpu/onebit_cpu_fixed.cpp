// Exact binary GEMVs on integer hardware: x in 24-bit fixed point, the +-1 sums as exact integers.
//
// Per x row, with amax = max|x| (x after x*g, rounded as the reference) and 2^e the smallest
// power of two with amax / 2^e <= FX_LIMIT:
//   X_k = round_half_even(x_k / 2^e)   (an integer, |X_k| <= FX_LIMIT < 2^23)
// Then sum_k s_k x_k (s = +-1 from the bits) = 2^e (2 P - T) exactly, with T = sum_k X_k and
// P = sum of X over the +1 columns, an exact integer; the result is rounded once, to fp32, at the
// end of the row.  The only error is the rounding of x to X: at most 2^(e-1) <= amax 2^-23 per
// column, i.e. about fp32's own rounding of the largest |x| of the row; the fp32 reference's
// running sum rounds at ulp(partial sum), which is as large for any row whose partial sums reach
// amax.  Rows with non-finite values are left to the fp32 kernels (fixed_x reports them).
//
// Two kernels compute P:
// * fxlut (algo=11, AVX-512, the default off Intel; below): lookups in int32 tables of X, one
//   per 4 columns, over a transposed copy of the bits (cached: as much memory again as the
//   packed bits).
// * fxlut on AVX2 (onebit_cpu_fixed_avx2.cpp): 8-entry tables per 3 columns (a ymm's vpermd),
//   the AVX2 default off Intel at every batch size.
// * fx (algo=10, AVX512-VNNI + VBMI; no extra memory): X as three balanced int8 digit planes,
//   X = d2 2^16 + d1 2^8 + d0 with every d in [-128, 127], P = sum_d 256^d P_d; per 64 columns
//   the bits become a 0/1 byte vector and vpdpbusd(that, plane d) adds 64 products into 16 int32
//   lanes, one instruction per plane.  Cost per 128 weights and row: 2 bit expansions + 6
//   vpdpbusd, against 12 shifts / ternary-logic ops / fp32 adds for the `shift` kernel.  Lane
//   bounds: a lane adds at most 4 * 128 per instruction, so in_features < 2^21 stay exact.
#include "onebit_cpu.h"

#include <immintrin.h>

#include <memory>

namespace onebit_packed {

FixedX fixed_x(const float* xs, int64_t M, int64_t ldx, int64_t K, bool planes, bool tables, bool simd) {
  FixedX r;
  r.nb = (K + QB - 1) / QB;
  r.ldq = r.nb * QB;
  if (planes) r.d.assign(M * FX_PLANES * r.ldq, 0);
  if (tables) r.X.assign(M * r.ldq, 0);
  r.T.assign(M, 0);
  r.scale.assign(M, 0.0);
  std::vector<char> bad(M, 0);
  // rows in parallel (a prefill's 512 rows were a serial ~ms per call), ~16K columns per chunk
  at::parallel_for(0, M, std::max<int64_t>(1, 16384 / std::max<int64_t>(1, K)), [&](int64_t mb, int64_t me) {
    for (int64_t m = mb; m < me; ++m) {
      const float* xr = xs + m * ldx;
      bool finite = true;
      float amax = 0.f;
      if (simd) {
        amax = fixed_amax_avx2(xr, K, finite);
      } else {
        for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(xr[k]));
        finite = std::isfinite(amax);
      }
      if (!finite) {
        bad[m] = 1;
        continue;
      }
      if (amax == 0.f) continue;  // X = 0, T = 0: y = 0
      // step = 2^e, the smallest power of two with amax / step <= FX_LIMIT
      int e = 0;
      std::frexp(double(amax) / double(FX_LIMIT), &e);  // amax/L = f 2^e, f in [0.5, 1)
      double step = std::ldexp(1.0, e - 1);
      while (double(amax) / step > double(FX_LIMIT)) step *= 2.0;  // at most twice
      const double inv = 1.0 / step;  // a power of two: x * inv is exact in double
      r.scale[m] = step;
      int32_t* Xr = tables ? r.X.data() + m * r.ldq : nullptr;
      // AVX2: x * inv in fp32, exact too while inv is a normal float (amax above ~2^-104; a
      // product that underflows is below 1/2 and rounds to 0 either way), rounded by cvtps2dq
      // (round half to even, as nearbyint)
      if (simd && Xr && !planes && inv <= 0x1p127) {
        r.T[m] = fixed_row_avx2(xr, K, float(inv), Xr);
        continue;
      }
      int8_t* d0 = planes ? r.d.data() + m * FX_PLANES * r.ldq : nullptr;
      int64_t T = 0;
      for (int64_t k = 0; k < K; ++k) {
        const int32_t X = int32_t(std::nearbyint(double(xr[k]) * inv));
        T += X;
        if (Xr) Xr[k] = X;
        if (d0) {
          const int32_t a = int32_t(int8_t(uint8_t(X & 0xFF)));  // low digit, balanced
          const int32_t X1 = (X - a) >> 8;
          const int32_t b = int32_t(int8_t(uint8_t(X1 & 0xFF)));
          d0[k] = int8_t(a);
          d0[r.ldq + k] = int8_t(b);
          d0[2 * r.ldq + k] = int8_t((X1 - b) >> 8);  // |X| <= FX_LIMIT keeps it in [-128, 127]
        }
      }
      r.T[m] = T;
    }
  });
  r.finite = std::find(bad.begin(), bad.end(), 1) == bad.end();
  return r;
}

// The 0/1 bytes of 64 bits: vpmultishiftqb puts bit j of the broadcast word in the low bit of
// byte j (byte j <- the word shifted right by j), an and keeps that bit.  On Zen 4 this measured
// cheaper than kmov + a zero-masked move.
FX_TARGET inline __m512i bits01(uint64_t b) {
  const __m512i sel = _mm512_set_epi64(0x3F3E3D3C3B3A3938ll, 0x3736353433323130ll, 0x2F2E2D2C2B2A2928ll,
                                       0x2726252423222120ll, 0x1F1E1D1C1B1A1918ll, 0x1716151413121110ll,
                                       0x0F0E0D0C0B0A0908ll, 0x0706050403020100ll);
  return _mm512_and_si512(_mm512_multishift_epi64_epi8(sel, _mm512_set1_epi64(int64_t(b))), _mm512_set1_epi8(1));
}

// one row, one block of 128 columns (bit words lo, hi): a_d += P_d of the block, per lane
FX_TARGET inline void fx_row(uint64_t lo, uint64_t hi, const __m512i (&x)[2 * FX_PLANES], __m512i& a0,
                             __m512i& a1, __m512i& a2) {
  const __m512i ka = bits01(lo), kb = bits01(hi);
  a0 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(a0, ka, x[0]), kb, x[1]);
  a1 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(a1, ka, x[2]), kb, x[3]);
  a2 = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(a2, ka, x[4]), kb, x[5]);
}

FX_TARGET inline int64_t lane_sum(__m512i t) {  // |lane| < 2^31 (see above)
  return _mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_cvtepi32_epi64(_mm512_castsi512_si256(t)),
                                                  _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(t, 1))));
}

FX_TARGET void bin_fx_vnni(const FixedX& fx, int64_t m0, int64_t M, const uint8_t* W, int64_t KB,
                           int64_t n0, int64_t n1, float* y, int64_t ldy) {
  constexpr int64_t BB = QB / 8;             // bit bytes per block of 128 columns (16)
  const int64_t nb = fx.nb, full = KB / BB;  // blocks whose 16 bit bytes are all in the row
  for (int64_t m = m0; m < m0 + M; ++m) {
    const int8_t* p0 = fx.d.data() + m * FX_PLANES * fx.ldq;
    const int64_t pl = fx.ldq;
    for (int64_t n = n0; n < n1; n += 4) {
      const int rows = int(std::min<int64_t>(4, n1 - n));
      const uint8_t* w[4];
      for (int r = 0; r < 4; ++r) w[r] = W + (n + std::min(r, rows - 1)) * KB;
      // twelve named accumulators (row r, plane d): an array of them made GCC copy each one
      // twice per block
      __m512i a00 = _mm512_setzero_si512(), a01 = a00, a02 = a00, a10 = a00, a11 = a00, a12 = a00,
              a20 = a00, a21 = a00, a22 = a00, a30 = a00, a31 = a00, a32 = a00;
      for (int64_t b = 0; b <= full && b < nb; ++b) {
        uint64_t lo[4], hi[4];
        if (b < full) {
          if ((b & 3) == 0) prefetch_ahead(w, KB, b * BB);
          for (int r = 0; r < 4; ++r) {
            std::memcpy(&lo[r], w[r] + b * BB, 8);
            std::memcpy(&hi[r], w[r] + b * BB + 8, 8);
          }
        } else {  // last, partial block: the planes are zero past in_features
          const int64_t left = KB - b * BB;
          for (int r = 0; r < 4; ++r) {
            lo[r] = hi[r] = 0;
            std::memcpy(&lo[r], w[r] + b * BB, std::min<int64_t>(8, left));
            if (left > 8) std::memcpy(&hi[r], w[r] + b * BB + 8, left - 8);
          }
        }
        const int8_t* xb = p0 + b * QB;
        const __m512i x[2 * FX_PLANES] = {
            _mm512_loadu_si512(xb),          _mm512_loadu_si512(xb + 64),
            _mm512_loadu_si512(xb + pl),     _mm512_loadu_si512(xb + pl + 64),
            _mm512_loadu_si512(xb + 2 * pl), _mm512_loadu_si512(xb + 2 * pl + 64)};
        fx_row(lo[0], hi[0], x, a00, a01, a02);
        fx_row(lo[1], hi[1], x, a10, a11, a12);
        fx_row(lo[2], hi[2], x, a20, a21, a22);
        fx_row(lo[3], hi[3], x, a30, a31, a32);
      }
      const __m512i a[4][FX_PLANES] = {{a00, a01, a02}, {a10, a11, a12}, {a20, a21, a22}, {a30, a31, a32}};
      for (int r = 0; r < rows; ++r) {
        const int64_t P = (lane_sum(a[r][2]) * 256 + lane_sum(a[r][1])) * 256 + lane_sum(a[r][0]);
        y[(m - m0) * ldy + n + r] = float(fx.scale[m] * double(2 * P - fx.T[m]));
      }
    }
  }
}

// ---------------------------------------------------------------- fxlut: integer tables
// Per x row and group of 4 columns g a table T_g[n] = sum_{i<4} bit_i(n) X_{4g+i} (16 int32: one
// zmm; built with 4 zero-masked broadcasts and 3 adds).  The bits are read from a transposed copy
// in tiles of 16 rows with 4 bytes of a row together (BITS_DWORDS): one 64-byte load holds 32
// columns of 16 rows, one row per int32 lane, and nibble h of a lane (columns 4h .. 4h+3) is the
// index of T_{8q+h}.  vpermd reads only the low 4 bits of each index, so a shift by 4h is all it
// takes: per 32 columns x 16 rows 1 load, 7 shifts, 8 vpermd, 8 adds, and no shuffle besides the
// lookups.  |T| <= 4 FX_LIMIT < 2^25, so an int32 lane takes 4 loads (32 lookups, < 2^30) before
// it is widened into two int64 halves.  64 rows (4 tiles) share each table load.

AVX512_TARGET void build_fx_tables(const int32_t* X, int64_t groups, int32_t* tab) {
  for (int64_t g = 0; g < groups; ++g) {
    const int32_t* x = X + 4 * g;
    __m512i t = _mm512_maskz_set1_epi32(0xAAAA, x[0]);
    t = _mm512_add_epi32(t, _mm512_maskz_set1_epi32(0xCCCC, x[1]));
    t = _mm512_add_epi32(t, _mm512_maskz_set1_epi32(0xF0F0, x[2]));
    t = _mm512_add_epi32(t, _mm512_maskz_set1_epi32(0xFF00, x[3]));
    _mm512_storeu_si512(tab + 16 * g, t);
  }
}

AVX512_TARGET inline void widen(__m512i& a, __m512i& lo, __m512i& hi) {
  lo = _mm512_add_epi64(lo, _mm512_cvtepi32_epi64(_mm512_castsi512_si256(a)));
  hi = _mm512_add_epi64(hi, _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(a, 1)));
  a = _mm512_setzero_si512();
}

// the 8 lookups of one 64-byte load (32 columns of 16 rows), summed as a tree
AVX512_TARGET inline __m512i lookups(__m512i v, const __m512i (&t)[8]) {
  const __m512i p01 = _mm512_add_epi32(_mm512_permutexvar_epi32(v, t[0]),
                                       _mm512_permutexvar_epi32(_mm512_srli_epi32(v, 4), t[1]));
  const __m512i p23 = _mm512_add_epi32(_mm512_permutexvar_epi32(_mm512_srli_epi32(v, 8), t[2]),
                                       _mm512_permutexvar_epi32(_mm512_srli_epi32(v, 12), t[3]));
  const __m512i p45 = _mm512_add_epi32(_mm512_permutexvar_epi32(_mm512_srli_epi32(v, 16), t[4]),
                                       _mm512_permutexvar_epi32(_mm512_srli_epi32(v, 20), t[5]));
  const __m512i p67 = _mm512_add_epi32(_mm512_permutexvar_epi32(_mm512_srli_epi32(v, 24), t[6]),
                                       _mm512_permutexvar_epi32(_mm512_srli_epi32(v, 28), t[7]));
  return _mm512_add_epi32(_mm512_add_epi32(p01, p23), _mm512_add_epi32(p45, p67));
}

// 64 rows (4 tiles of 16, at s[0..3]; a repeated pointer past the last tile) against one x row's
// tables: P of each row into P[0..63].  `next`: the 64 KBp bytes the next call reads (prefetched,
// one line per 16 columns; a prefetch never faults, so past the end of the copy is harmless)
AVX512_TARGET void fx_lut_rows(const uint8_t* const* s, const uint8_t* next, const int32_t* tab, int64_t KBp,
                               int64_t* P) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  __m512i l0 = a0, h0 = a0, l1 = a0, h1 = a0, l2 = a0, h2 = a0, l3 = a0, h3 = a0;
  const int64_t nq = KBp / 4;  // 64-byte loads per tile
  for (int64_t q0 = 0; q0 < nq; q0 += 4) {
    for (int64_t q = q0; q < std::min(nq, q0 + 4); ++q) {
      for (int i = 0; i < 4; ++i) _mm_prefetch(reinterpret_cast<const char*>(next + 256 * q + 64 * i), _MM_HINT_T1);
      __m512i t[8];
      for (int h = 0; h < 8; ++h) t[h] = _mm512_loadu_si512(tab + 128 * q + 16 * h);
      a0 = _mm512_add_epi32(a0, lookups(_mm512_loadu_si512(s[0] + 64 * q), t));
      a1 = _mm512_add_epi32(a1, lookups(_mm512_loadu_si512(s[1] + 64 * q), t));
      a2 = _mm512_add_epi32(a2, lookups(_mm512_loadu_si512(s[2] + 64 * q), t));
      a3 = _mm512_add_epi32(a3, lookups(_mm512_loadu_si512(s[3] + 64 * q), t));
    }
    widen(a0, l0, h0);
    widen(a1, l1, h1);
    widen(a2, l2, h2);
    widen(a3, l3, h3);
  }
  _mm512_storeu_si512(P, l0), _mm512_storeu_si512(P + 8, h0);
  _mm512_storeu_si512(P + 16, l1), _mm512_storeu_si512(P + 24, h1);
  _mm512_storeu_si512(P + 32, l2), _mm512_storeu_si512(P + 40, h2);
  _mm512_storeu_si512(P + 48, l3), _mm512_storeu_si512(P + 56, h3);
}

void bin_fx_lut(const FixedX& fx, int64_t M, const at::Tensor& packed, float* acc) {
  constexpr int64_t T16 = 16, UNIT = 64;  // rows per transposed tile / per pass
  const int64_t N = packed.size(0), KBp = fx.nb * (QB / 8), tiles = (N + T16 - 1) / T16;
  const at::Tensor R = transposed_bits(packed, KBp, BITS_DWORDS);
  const uint8_t* rp = R.data_ptr<uint8_t>();
  const int64_t groups = 2 * KBp;  // of 4 columns; X is zero past in_features (ldq = 8 KBp)
  const int64_t units = (N + UNIT - 1) / UNIT;
  // blocks of x rows whose tables fit ~512 KiB of L2 (a 2048-column row's are 32 KiB), as on AVX2:
  // one parallel region over (row block, unit), row-block-major; a thread builds the tables of each
  // row block it reaches (only those: a 2048-row prefill of 5632 columns would otherwise hold 180
  // MiB of them).  A unit's packed bytes are counted at a quarter: this kernel does ~4x less work
  // per byte than the ones par_grain was swept with, so a 256-row layer (4 units) stays on the
  // calling thread
  const int64_t MB = std::max<int64_t>(1, (512 * 1024) / (groups * 64)), nmb = (M + MB - 1) / MB;
  at::parallel_for(0, nmb * units, par_grain(UNIT * KBp * std::min(M, MB) / 4, 1), [&](int64_t b, int64_t e) {
    alignas(64) int64_t P[UNIT];
    // every entry is written by build_fx_tables: no zero fill
    std::unique_ptr<int32_t[]> tabs(new int32_t[size_t(std::min(M, MB)) * groups * 16]);
    int64_t built = -1;
    for (int64_t i = b; i < e; ++i) {
      const int64_t blk = i / units, m0 = blk * MB, m1 = std::min(M, m0 + MB), u = i % units;
      if (blk != built) {
        for (int64_t m = m0; m < m1; ++m)
          build_fx_tables(fx.X.data() + m * fx.ldq, groups, tabs.get() + (m - m0) * groups * 16);
        built = blk;
      }
      const uint8_t* s[4];
      for (int r = 0; r < 4; ++r) s[r] = rp + std::min(tiles - 1, 4 * u + r) * KBp * T16;
      const int64_t rows = std::min(UNIT, N - u * UNIT);
      for (int64_t m = m0; m < m1; ++m) {
        // next: this unit again for the next x row, else the next unit
        const uint8_t* next = m + 1 < m1 ? s[0] : s[0] + 4 * KBp * T16;
        fx_lut_rows(s, next, tabs.get() + (m - m0) * groups * 16, KBp, P);
        for (int64_t r = 0; r < rows; ++r)
          acc[m * N + u * UNIT + r] = float(fx.scale[m] * double(2 * P[r] - fx.T[m]));
      }
    }
  });
}

}  // namespace onebit_packed
