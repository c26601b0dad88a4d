// Exact binary GEMV on integer hardware: x in 24-bit fixed point, split into three int8 digit
// planes, summed by AVX512-VNNI (algo=fx; the fp32 default where the CPU has VNNI).
//
// Per x row, with amax = max|x| (x after x*g, rounded as the reference) and 2^e the smallest
// power of two with amax / 2^e <= FX_LIMIT:
//   X_k = round_half_even(x_k / 2^e)   (an integer, |X_k| <= FX_LIMIT < 2^23)
//   X_k = d2_k 2^16 + d1_k 2^8 + d0_k  with every digit d in [-128, 127] (balanced base 256)
// Then sum_k s_k x_k (s = ±1 from the bits) = 2^e (2 P - T) exactly, with T = sum_k X_k and
// P = sum of X over the +1 columns = sum_d 256^d P_d, and every P_d an exact integer: per 64
// columns the bits become a 0/1 byte vector (one zero-masked move) and vpdpbusd(that, plane d)
// adds 64 products into 16 int32 lanes, one instruction per plane.  The result is rounded once,
// to fp32, at the end of the row.
//
// The only error is the rounding of x to X: at most 2^(e-1) <= amax 2^-23 per column, i.e. below
// fp32's own rounding of the largest |x| of the row; the fp32 reference's running sum rounds at
// ulp(partial sum), which is at least as large for any row whose partial sums reach amax.  Rows
// with non-finite values are left to the fp32 kernels (fixed_x reports them).
//
// Cost per 128 weights and row: 2 zero-masked moves + 6 vpdpbusd (the masked moves shared by
// the 3 planes), against 12 shifts / ternary-logic ops / fp32 adds for the `shift` kernel.
// Lane bounds: a lane adds at most 4 * 128 per instruction, so in_features < 2^21 stay exact.
#include "onebit_cpu.h"

#include <immintrin.h>

namespace onebit_packed {

FixedX fixed_x(const float* xs, int64_t M, int64_t ldx, int64_t K) {
  FixedX r;
  r.nb = (K + QB - 1) / QB;
  r.ldq = r.nb * QB;
  r.d.assign(M * FX_PLANES * r.ldq, 0);
  r.T.assign(M, 0);
  r.scale.assign(M, 0.0);
  bool finite = true;
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = xs + m * ldx;
    float amax = 0.f;
    for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(xr[k]));
    if (!std::isfinite(amax)) {
      finite = false;
      break;
    }
    if (amax == 0.f) continue;  // X = 0, T = 0: y = 0
    // step = 2^e, the smallest power of two with amax / step <= FX_LIMIT
    int e = 0;
    std::frexp(double(amax) / double(FX_LIMIT), &e);  // amax/L = f 2^e, f in [0.5, 1)
    double step = std::ldexp(1.0, e - 1);
    while (double(amax) / step > double(FX_LIMIT)) step *= 2.0;  // at most twice
    const double inv = 1.0 / step;  // a power of two: x * inv is exact in double
    r.scale[m] = step;
    int8_t* d0 = r.d.data() + m * FX_PLANES * r.ldq;
    int8_t* d1 = d0 + r.ldq;
    int8_t* d2 = d1 + r.ldq;
    int64_t T = 0;
    for (int64_t k = 0; k < K; ++k) {
      const int32_t X = int32_t(std::nearbyint(double(xr[k]) * inv));
      T += X;
      const int32_t a = int32_t(int8_t(uint8_t(X & 0xFF)));  // low digit, balanced
      const int32_t X1 = (X - a) >> 8;
      const int32_t b = int32_t(int8_t(uint8_t(X1 & 0xFF)));
      d0[k] = int8_t(a);
      d1[k] = int8_t(b);
      d2[k] = int8_t((X1 - b) >> 8);  // |X| <= FX_LIMIT keeps it in [-128, 127]
    }
    r.T[m] = T;
  }
  r.finite = finite;
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

}  // namespace onebit_packed
