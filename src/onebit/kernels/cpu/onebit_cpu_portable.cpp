// Portable kernels of the packed onebit ops (any CPU): the ±1 / ternary table kernels, the int8
// activation quantizer and its scalar kernel, the T-MAC style LUT.  Shared declarations:
// onebit_cpu.h; dispatch: onebit_cpu.cpp.
#include "onebit_cpu.h"

namespace onebit_packed {

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

QuantX quantize_x(const float* xs, int64_t M, int64_t ldx, int64_t K, bool avx2) {
  QuantX r;
  r.nb = (K + QB - 1) / QB;
  r.ldq = r.nb * QB + 32;
  r.q.assign(M * r.ldq, 0);
  r.s.assign(M * r.nb, 0.f);
  r.u.assign(M * r.nb, 0);
  r.S.assign(M, 0.f);
  r.c.assign(M, 0.f);
  std::vector<int64_t> part(M * r.nb, 0);  // u_b S_b per (row, block), summed per row below
  // pass 1: a_b = max|x_b| / 127 per (row, block), into s
  // threads over (row, block), 32 blocks at least per thread: a long decode row is split too
  at::parallel_for(0, M * r.nb, 32, [&](int64_t b0, int64_t e0) {
    for (int64_t i = b0; i < e0; ++i) {
      const int64_t m = i / r.nb, b = i % r.nb;
      const float* xr = xs + m * ldx;
      const int64_t k0 = b * QB, k1 = std::min(K, k0 + QB);
      float amax = 0.f;
      if (avx2) {
        amax = block_amax_avx2(xr + k0, k1 - k0);
      } else {
        for (int64_t k = k0; k < k1; ++k) amax = std::max(amax, std::fabs(xr[k]));
      }
      r.s[i] = amax / 127.0f;
    }
  });
  // the row scale S and the integer block scales u_b
  for (int64_t m = 0; m < M; ++m) {
    float amax = 0.f;
    for (int64_t b = 0; b < r.nb; ++b) amax = std::max(amax, r.s[m * r.nb + b]);
    const float S = amax / 255.0f;
    r.S[m] = S;
    for (int64_t b = 0; b < r.nb && S > 0.f; ++b) {
      const float a = r.s[m * r.nb + b];
      const float u = a > 0.f ? std::min(255.f, std::ceil(a / S)) : 0.f;
      r.u[m * r.nb + b] = uint8_t(u);
      r.s[m * r.nb + b] = S * u;
    }
  }
  // pass 2: q = round_half_even(x / s_b)
  at::parallel_for(0, M * r.nb, 32, [&](int64_t b0, int64_t e0) {
    for (int64_t i = b0; i < e0; ++i) {
      const int64_t m = i / r.nb, b = i % r.nb;
      const float s = r.s[i];
      if (s == 0.f) continue;
      const float* xr = xs + m * ldx;
      int8_t* q = r.q.data() + m * r.ldq;
      const int64_t k0 = b * QB, k1 = std::min(K, k0 + QB);
      int64_t sum = 0;
      if (avx2) {
        sum = quant_block_avx2(xr + k0, k1 - k0, s, q + k0);
      } else {
        for (int64_t k = k0; k < k1; ++k) {
          float v = std::nearbyint(xr[k] / s);
          v = std::min(127.f, std::max(-127.f, v));
          q[k] = int8_t(v);
          sum += int64_t(v);
        }
      }
      part[i] = int64_t(r.u[i]) * sum;
    }
  });
  for (int64_t m = 0; m < M; ++m) {
    int64_t c = 0;
    for (int64_t b = 0; b < r.nb; ++b) c += part[m * r.nb + b];
    r.c[m] = float(double(r.S[m]) * double(c));
  }
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

}  // namespace onebit_packed
