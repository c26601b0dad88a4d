// onebit::decode_attention on AVX-512 (and AVX2: namespace avx2, 8 lanes), fp32: the attention of ONE query position (a decode step)
// over a KV cache whose keys are stored transposed.
//
//   q [nh, D], kt [nkv, D, L] (keys, transposed: row d of a KV head is its d-th component at every
//   position), v [nkv, L, D]; head h attends with KV head h / G, G = nh / nkv (grouped-query
//   attention); out[h] = softmax(q_h . k * scale) . v, [nh, D].
//
// Why a kernel: over a long cache, the reference's two small batched matmuls (8 rows per KV head)
// and SDPA's CPU kernel are slower than one pass that streams each KV head once
// (python bench/decode_attention.py measures the three side by side):
//   scores: 16 positions at a time, for every component d one load of kt[d][l..l+15] and G FMAs
//           with q[g][d] * scale broadcast (no horizontal sums, since the keys are transposed);
//   softmax: max, exp (a Cephes-style polynomial, ~1 ulp) and sum per head, the 1/sum applied last;
//   output: for every position the 64-column chunks of v[l] times the G probabilities, 4 heads x
//           4 chunks of accumulators at a time.
// AVX2 reads 16 positions per block too (two ymm halves sharing each broadcast of q, 4 heads per
// pass), and before its passes loads each KV head's cache lines once (touch_head, below).
// Threads over KV heads.  Checked against the pure-torch reference (kernels/reference.py).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <vector>

#include "onebit_cpu.h"

namespace onebit_packed {
namespace {

AVX512_TARGET inline __m512 exp512(__m512 x) {  // e^x for x <= 0 (softmax after the max)
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.33654f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // x - n ln2, ln2 in two parts
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 y = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(y, n);
}

inline __mmask16 tail_mask(int64_t left) { return left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1); }

// scores of GN heads (query rows qs, already times scale) at every position: s[g][l] (row stride Lp)
template <int GN>
AVX512_TARGET void scores(const float* qs, int64_t D, const float* kt, int64_t ksd, int64_t L, float* s,
                          int64_t Lp) {
  for (int64_t l0 = 0; l0 < L; l0 += 16) {
    const __mmask16 mk = tail_mask(L - l0);
    __m512 acc[GN];
    for (int g = 0; g < GN; ++g) acc[g] = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; ++d) {
      // D rows of keys are D streams: prefetch each 8 blocks (512 bytes) ahead
      _mm_prefetch(reinterpret_cast<const char*>(kt + d * ksd + l0 + 128), _MM_HINT_T0);
      const __m512 kv = _mm512_maskz_loadu_ps(mk, kt + d * ksd + l0);
      for (int g = 0; g < GN; ++g) acc[g] = _mm512_fmadd_ps(_mm512_set1_ps(qs[g * D + d]), kv, acc[g]);
    }
    for (int g = 0; g < GN; ++g) _mm512_store_ps(s + g * Lp + l0, acc[g]);
  }
}

// out[g][d0 .. d0 + 16 CN) = sum_l p[g][l] v[l][...] / sum_g, for GN heads
template <int GN, int CN>
AVX512_TARGET void weighted(const float* p, int64_t Lp, const float* inv, const float* v, int64_t vsl, int64_t L,
                            int64_t d0, float* out, int64_t D) {
  __m512 acc[GN][CN];
  for (int g = 0; g < GN; ++g)
    for (int c = 0; c < CN; ++c) acc[g][c] = _mm512_setzero_ps();
  for (int64_t l = 0; l < L; ++l) {
    const float* vl = v + l * vsl + d0;
    __m512 vv[CN];
    for (int c = 0; c < CN; ++c) vv[c] = _mm512_loadu_ps(vl + 16 * c);
    for (int g = 0; g < GN; ++g) {
      const __m512 pg = _mm512_set1_ps(p[g * Lp + l]);
      for (int c = 0; c < CN; ++c) acc[g][c] = _mm512_fmadd_ps(pg, vv[c], acc[g][c]);
    }
  }
  for (int g = 0; g < GN; ++g)
    for (int c = 0; c < CN; ++c) _mm512_storeu_ps(out + g * D + d0 + 16 * c, _mm512_mul_ps(acc[g][c], _mm512_set1_ps(inv[g])));
}

template <int GN>
AVX512_TARGET void weighted_all(const float* p, int64_t Lp, const float* inv, const float* v, int64_t vsl, int64_t L,
                                float* out, int64_t D) {
  int64_t d0 = 0;
  for (; d0 + 64 <= D; d0 += 64) weighted<GN, 4>(p, Lp, inv, v, vsl, L, d0, out, D);
  for (; d0 < D; d0 += 16) weighted<GN, 1>(p, Lp, inv, v, vsl, L, d0, out, D);
}

// one KV head: G query rows qs (already times scale), keys kt (row stride ksd), values v (row
// stride vsl), L positions; s: scratch of G x Lp floats; out: G x D
AVX512_TARGET void attend_head(const float* qs, int64_t G, int64_t D, const float* kt, int64_t ksd,
                               const float* v, int64_t vsl, int64_t L, float* s, int64_t Lp, float* out) {
  for (int64_t g0 = 0; g0 < G; g0 += 8) {  // up to 8 heads per pass over the keys
    const float* q = qs + g0 * D;
    float* sg = s + g0 * Lp;
    switch (std::min<int64_t>(8, G - g0)) {
      case 1: scores<1>(q, D, kt, ksd, L, sg, Lp); break;
      case 2: scores<2>(q, D, kt, ksd, L, sg, Lp); break;
      case 3: scores<3>(q, D, kt, ksd, L, sg, Lp); break;
      case 4: scores<4>(q, D, kt, ksd, L, sg, Lp); break;
      case 5: scores<5>(q, D, kt, ksd, L, sg, Lp); break;
      case 6: scores<6>(q, D, kt, ksd, L, sg, Lp); break;
      case 7: scores<7>(q, D, kt, ksd, L, sg, Lp); break;
      default: scores<8>(q, D, kt, ksd, L, sg, Lp); break;
    }
  }
  // softmax numerators and sums; positions past L -> 0
  std::vector<float> inv(G);
  for (int64_t g = 0; g < G; ++g) {
    float* sg = s + g * Lp;
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int64_t l0 = 0; l0 < L; l0 += 16)
      mx = _mm512_mask_max_ps(mx, tail_mask(L - l0), mx, _mm512_load_ps(sg + l0));
    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t l0 = 0; l0 < L; l0 += 16) {
      const __mmask16 mk = tail_mask(L - l0);
      const __m512 e = _mm512_maskz_mov_ps(mk, exp512(_mm512_sub_ps(_mm512_load_ps(sg + l0), m)));
      _mm512_store_ps(sg + l0, e);
      sum = _mm512_add_ps(sum, e);
    }
    inv[g] = 1.f / _mm512_reduce_add_ps(sum);
  }
  for (int64_t g0 = 0; g0 < G; g0 += 4) {  // 4 heads x 64 columns of accumulators per pass over v
    const float* p = s + g0 * Lp;
    float* o = out + g0 * D;
    switch (std::min<int64_t>(4, G - g0)) {
      case 1: weighted_all<1>(p, Lp, inv.data() + g0, v, vsl, L, o, D); break;
      case 2: weighted_all<2>(p, Lp, inv.data() + g0, v, vsl, L, o, D); break;
      case 3: weighted_all<3>(p, Lp, inv.data() + g0, v, vsl, L, o, D); break;
      default: weighted_all<4>(p, Lp, inv.data() + g0, v, vsl, L, o, D); break;
    }
  }
}

// ---------------------------------------------------------------- AVX2 (8 lanes, the same passes)
namespace avx2 {

AVX2_TARGET inline __m256 exp256(__m256 x) {  // e^x for x <= 0, as exp512 (2^n by the exponent bits)
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.33654f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 y = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  // n in [-126, 0]: 2^n is the normal float with exponent field n + 127
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

AVX2_TARGET inline __m256i tail_mask(int64_t left) {  // lanes < left
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(std::min<int64_t>(left, 8))), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// 16 positions per block (a whole cache line of each key row, as the AVX-512 kernel reads), as two
// ymm halves sharing every broadcast of q: up to 4 heads x 2 halves of accumulators
template <int GN>
AVX2_TARGET void scores(const float* qs, int64_t D, const float* kt, int64_t ksd, int64_t L, float* s, int64_t Lp) {
  for (int64_t l0 = 0; l0 < L; l0 += 16) {
    const bool full = L - l0 >= 16;  // plain loads (masked ones only for the last block)
    const __m256i m0 = tail_mask(L - l0), m1 = tail_mask(L - l0 - 8);
    __m256 a0[GN], a1[GN];
    for (int g = 0; g < GN; ++g) a0[g] = a1[g] = _mm256_setzero_ps();
    for (int64_t d = 0; d < D; ++d) {
      const float* r = kt + d * ksd + l0;
      _mm_prefetch(reinterpret_cast<const char*>(r + 128), _MM_HINT_T0);
      const __m256 k0 = full ? _mm256_loadu_ps(r) : _mm256_maskload_ps(r, m0);
      const __m256 k1 = full ? _mm256_loadu_ps(r + 8) : _mm256_maskload_ps(r + 8, m1);
      for (int g = 0; g < GN; ++g) {
        const __m256 qg = _mm256_set1_ps(qs[g * D + d]);
        a0[g] = _mm256_fmadd_ps(qg, k0, a0[g]);
        a1[g] = _mm256_fmadd_ps(qg, k1, a1[g]);
      }
    }
    for (int g = 0; g < GN; ++g) {
      _mm256_store_ps(s + g * Lp + l0, a0[g]);
      _mm256_store_ps(s + g * Lp + l0 + 8, a1[g]);
    }
  }
}

template <int GN, int CN>
AVX2_TARGET void weighted(const float* p, int64_t Lp, const float* inv, const float* v, int64_t vsl, int64_t L,
                          int64_t d0, float* out, int64_t D) {
  __m256 acc[GN][CN];
  for (int g = 0; g < GN; ++g)
    for (int c = 0; c < CN; ++c) acc[g][c] = _mm256_setzero_ps();
  for (int64_t l = 0; l < L; ++l) {
    const float* vl = v + l * vsl + d0;
    __m256 vv[CN];
    for (int c = 0; c < CN; ++c) vv[c] = _mm256_loadu_ps(vl + 8 * c);
    for (int g = 0; g < GN; ++g) {
      const __m256 pg = _mm256_set1_ps(p[g * Lp + l]);
      for (int c = 0; c < CN; ++c) acc[g][c] = _mm256_fmadd_ps(pg, vv[c], acc[g][c]);
    }
  }
  for (int g = 0; g < GN; ++g)
    for (int c = 0; c < CN; ++c)
      _mm256_storeu_ps(out + g * D + d0 + 8 * c, _mm256_mul_ps(acc[g][c], _mm256_set1_ps(inv[g])));
}

template <int GN>
AVX2_TARGET void weighted_all(const float* p, int64_t Lp, const float* inv, const float* v, int64_t vsl, int64_t L,
                              float* out, int64_t D) {
  int64_t d0 = 0;  // D is a multiple of 16
  for (; d0 + 32 <= D; d0 += 32) weighted<GN, 4>(p, Lp, inv, v, vsl, L, d0, out, D);
  for (; d0 < D; d0 += 16) weighted<GN, 2>(p, Lp, inv, v, vsl, L, d0, out, D);
}

AVX2_TARGET inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

AVX2_TARGET inline float hsum(__m256 v) {
  __m128 m = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_add_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_add_ss(m, _mm_movehdup_ps(m)));
}

AVX2_TARGET void attend_head(const float* qs, int64_t G, int64_t D, const float* kt, int64_t ksd, const float* v,
                             int64_t vsl, int64_t L, float* s, int64_t Lp, float* out) {
  for (int64_t g0 = 0; g0 < G; g0 += 4) {  // up to 4 heads per pass over the keys
    const float* q = qs + g0 * D;
    float* sg = s + g0 * Lp;
    switch (std::min<int64_t>(4, G - g0)) {
      case 1: scores<1>(q, D, kt, ksd, L, sg, Lp); break;
      case 2: scores<2>(q, D, kt, ksd, L, sg, Lp); break;
      case 3: scores<3>(q, D, kt, ksd, L, sg, Lp); break;
      default: scores<4>(q, D, kt, ksd, L, sg, Lp); break;
    }
  }
  std::vector<float> inv(G);
  for (int64_t g = 0; g < G; ++g) {
    float* sg = s + g * Lp;
    __m256 mx = _mm256_set1_ps(-INFINITY);
    for (int64_t l0 = 0; l0 < L; l0 += 8)  // lanes past L: -inf
      mx = _mm256_max_ps(mx, _mm256_blendv_ps(_mm256_set1_ps(-INFINITY), _mm256_load_ps(sg + l0),
                                              _mm256_castsi256_ps(tail_mask(L - l0))));
    const __m256 m = _mm256_set1_ps(hmax(mx));
    __m256 sum = _mm256_setzero_ps();
    for (int64_t l0 = 0; l0 < L; l0 += 8) {  // lanes past L: 0
      const __m256 e = _mm256_and_ps(exp256(_mm256_sub_ps(_mm256_load_ps(sg + l0), m)),
                                     _mm256_castsi256_ps(tail_mask(L - l0)));
      _mm256_store_ps(sg + l0, e);
      sum = _mm256_add_ps(sum, e);
    }
    inv[g] = 1.f / hsum(sum);
  }
  for (int64_t g0 = 0; g0 < G; g0 += 2) {  // 2 heads x 32 columns of accumulators per pass over v
    const float* p = s + g0 * Lp;
    float* o = out + g0 * D;
    if (G - g0 >= 2)
      weighted_all<2>(p, Lp, inv.data() + g0, v, vsl, L, o, D);
    else
      weighted_all<1>(p, Lp, inv.data() + g0, v, vsl, L, o, D);
  }
}

}  // namespace avx2

// the first L positions of one KV head (D rows of keys, L rows of values), one load per cache
// line.  In a decode step the cache comes from memory (the weights read since the layer's last
// step evicted it), and the passes above touch it in D separate key streams and strided value
// rows, more than the hardware prefetcher follows; independent loads of every line first (the
// next head's before computing this one) keep many misses in flight (prefetch hints gained less in
// a development run; python bench/decode_attention.py's "dram" rows measure the result)
inline void touch_head(const float* kt, int64_t ksd, const float* v, int64_t vsl, int64_t L, int64_t D) {
  uint32_t sink = 0;
  for (int64_t d = 0; d < D; ++d) {
    const uint32_t* r = reinterpret_cast<const uint32_t*>(kt + d * ksd);
    for (int64_t i = 0; i < L; i += 16) sink |= r[i];
  }
  for (int64_t l = 0; l < L; ++l) {
    const uint32_t* r = reinterpret_cast<const uint32_t*>(v + l * vsl);
    for (int64_t i = 0; i < D; i += 16) sink |= r[i];
  }
  asm volatile("" : : "r"(sink));
}

}  // namespace

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& kt, const at::Tensor& v, double scale, int64_t isa) {
  TORCH_CHECK(isa == 1 || isa == 2, "decode_attention: isa must be 1 (AVX2) or 2 (AVX-512)");
  TORCH_CHECK(isa == 2 ? __builtin_cpu_supports("avx512f") : __builtin_cpu_supports("avx2"),
              "decode_attention: this CPU lacks the ISA");
  TORCH_CHECK(q.dim() == 2 && kt.dim() == 3 && v.dim() == 3, "decode_attention: q [nh, D], kt [nkv, D, L], v [nkv, L, D]");
  TORCH_CHECK(q.scalar_type() == at::kFloat && kt.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat,
              "decode_attention: float32 tensors expected");
  const int64_t nh = q.size(0), D = q.size(1), nkv = kt.size(0), L = kt.size(2);
  TORCH_CHECK(kt.size(1) == D && v.size(0) == nkv && v.size(1) == L && v.size(2) == D && nkv > 0 && nh % nkv == 0,
              "decode_attention: shapes do not match");
  TORCH_CHECK(D % 16 == 0 && L > 0, "decode_attention: head_dim must be a multiple of 16 and L > 0");
  TORCH_CHECK(kt.stride(2) == 1 && v.stride(2) == 1, "decode_attention: kt / v rows must be contiguous");
  const int64_t G = nh / nkv, Lp = (L + 15) / 16 * 16;
  const at::Tensor qs = (q * scale).contiguous();
  at::Tensor out = at::empty({nh, D}, q.options());
  const float* qp = qs.data_ptr<float>();
  const float* kp = kt.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, nkv, 1, [&](int64_t b, int64_t e) {
    float* s = static_cast<float*>(std::aligned_alloc(64, sizeof(float) * G * Lp));
    const int64_t ks = kt.stride(0), kd = kt.stride(1), vh = v.stride(0), vl = v.stride(1);
    const bool touch = isa == 1;  // AVX-512: no gain from memory, a loss when warm (the "dram" rows)
    if (touch) touch_head(kp + b * ks, kd, vp + b * vh, vl, L, D);
    for (int64_t h = b; h < e; ++h) {
      if (touch && h + 1 < e) touch_head(kp + (h + 1) * ks, kd, vp + (h + 1) * vh, vl, L, D);
      (isa == 2 ? attend_head : avx2::attend_head)(qp + h * G * D, G, D, kp + h * kt.stride(0), kt.stride(1),
                                                   vp + h * v.stride(0), v.stride(1), L, s, Lp, op + h * G * D);
    }
    std::free(s);
  });
  return out;
}

}  // namespace onebit_packed
