// CPU kernels for the block-scaled packed formats (built with onebit_cpu.cpp into one extension by
// onebit.kernels.cpu.loader; registered with the dispatcher as torch.ops.onebit_cpu_quant.*):
//
//   quant_linear:      y = x · Ŵᵀ, Ŵ = (q - zero) ⊙ scale from n-bit codes (bits 2, 4, 8) packed
//                      LSB first (formats.packing.pack(q, bits)); scale [1,1] / [out,1] /
//                      [out, ceil(in/group)], zero of the same shape (uint8 or float) or none
//                      (symmetric: zero 2**(bits-1)).
//   block_sign_linear: y = x · Ŵᵀ, Ŵ = sign ⊙ scale[row, col // group] from 1 sign bit per weight
//                      (pack_signs: bit 1 -> +1, 0 -> -1), scales [out, ceil(in/group)] (Q1_0).
//
// Rounding follows the pure-torch reference (kernels/reference.py) for every activation dtype T:
// each weight is rnd_T(rnd_T(q - rnd_T(zero)) * rnd_T(scale)) (block sign: ±rnd_T(scale), exact),
// the dot product is accumulated in fp32 and the result rounded to T once.
//
// Paths (one build for any x86-64; ISA chosen at run time, function-level target attributes):
//   * small batch (M < mm_threshold): a GEMV over the packed rows, codes decoded in registers,
//     up to 8 x rows share every decoded weight vector, threads over output rows.
//       AVX-512: 32 weights per step.  2/4-bit: a 16-entry table of the group's exact weight
//                values, indexed by the codes with vpermps (x is stored permuted so that the
//                even/odd codes of a byte meet their x); 8-bit: vpmovzxbd + cvt + sub + mul +
//                rounding to T; 1-bit: the bit moved to the sign position (vpsllvd) and xored
//                into -scale (vpternlogd).
//       AVX2:    8 weights per step, codes shifted out of a broadcast word (vpsrlvd), converted
//                and scaled (the same formula), natural x order.
//       scalar:  portable, one weight at a time (8 partial sums).
//     The SIMD paths need groups of a multiple of 32 columns (or one group per row); other group
//     sizes take the scalar path.
//   * large batch (M >= mm_threshold): dequantize blocks of rows to T and call at::mm (BLAS).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace {

enum : int64_t { QISA_SCALAR = 0, QISA_AVX2 = 1, QISA_AVX512 = 2 };

int64_t q_best_isa() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("bmi2"))
    return QISA_AVX512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
    return QISA_AVX2;
#endif
  return QISA_SCALAR;
}

// ---------------------------------------------------------------------------------- parameters
enum PKind : int { P_F32 = 0, P_F16 = 1, P_BF16 = 2, P_U8 = 3 };

inline float ld(const void* p, int64_t i, int k) {
  switch (k) {
    case P_F16: return static_cast<float>(static_cast<const c10::Half*>(p)[i]);
    case P_BF16: return static_cast<float>(static_cast<const c10::BFloat16*>(p)[i]);
    case P_U8: return static_cast<float>(static_cast<const uint8_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

// RT: the activation dtype whose rounding the weights follow (0 fp32, 1 bf16, 2 fp16)
template <int RT>
inline float rnd(float v) {
  if constexpr (RT == 1) return static_cast<float>(c10::BFloat16(v));
  else if constexpr (RT == 2) return static_cast<float>(c10::Half(v));
  else return v;
}

struct QP {
  const uint8_t* W;
  int64_t KB, K, Kp, N;  // bytes per packed row, in_features, in padded to 32, out_features
  int bits;              // 1 (block sign), 2, 4, 8
  int64_t G, ng;         // columns per group (K when one group), groups per row
  const void* s;
  int sk;
  int64_t s_rs;  // scale: data, kind, row stride (0: one row for all)
  const void* z;
  int zk;
  int64_t z_rs;  // zero: data (nullptr: symmetric), kind, row stride
  float zsym;    // the symmetric zero 2**(bits-1)
  float* zbuf;   // SIMD paths: per-thread room for one row's ng zeros and scales (+16)
  float* sbuf;
};

// (rounded zero, rounded scale) of group g of row n
template <int RT>
inline void group_params(const QP& p, int64_t n, int64_t g, float& z, float& s) {
  s = rnd<RT>(ld(p.s, n * p.s_rs + g, p.sk));
  z = p.z ? rnd<RT>(ld(p.z, n * p.z_rs + g, p.zk)) : p.zsym;
}

template <int RT>
inline float wval(int q, float z, float s) {  // the dequantized weight, as the reference rounds it
  return rnd<RT>(rnd<RT>(static_cast<float>(q) - z) * s);
}

inline int code_at(const uint8_t* w, int64_t k, int bits) {
  const int64_t bit = k * bits;
  return (w[bit >> 3] >> (bit & 7)) & ((1 << bits) - 1);
}

// position j (0..31) of a 32-column chunk of the permuted x -> its column in the chunk (AVX-512)
inline int perm_col(int bits, int j) {
  const int lane = j & 15, second = j >> 4;
  if (bits == 4) return 2 * lane + second;
  if (bits == 2) return ((lane & 1) ? 16 + lane - 1 : lane) + second;
  return j;
}

// ---------------------------------------------------------------------------------- scalar
template <int RT>
void rows_scalar(const QP& p, int64_t n0, int64_t n1, const float* x, int64_t M, int64_t ldx, float* y) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* w = p.W + n * p.KB;
    for (int64_t m = 0; m < M; ++m) {
      const float* xm = x + m * ldx;
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t g = 0; g < p.ng; ++g) {
        float z, s;
        group_params<RT>(p, n, g, z, s);
        const int64_t k1 = std::min(p.K, (g + 1) * p.G);
        for (int64_t k = g * p.G; k < k1; ++k) {
          const int q = code_at(w, k, p.bits);
          const float wv = p.bits == 1 ? (q ? s : -s) : wval<RT>(q, z, s);
          acc[k & 7] += wv * xm[k];
        }
      }
      y[m * p.N + n] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    }
  }
}

// the bytes of a chunk starting at byte `off` of a row; past the row's end: zeros (x is 0 there)
inline const uint8_t* chunk(const uint8_t* w, int64_t off, int64_t KB, int nbytes, uint8_t* tmp) {
  if (off + nbytes <= KB) return w + off;
  std::memset(tmp, 0, 32);
  std::memcpy(tmp, w + off, static_cast<size_t>(KB - off));
  return tmp;
}

// ---------------------------------------------------------------------------------- AVX2
#define QAVX2 __attribute__((target("avx2,fma,f16c")))

template <int RT>
QAVX2 inline __m256 rnd256(__m256 v) {
  if constexpr (RT == 1) {
    __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    u = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF)));
    return _mm256_castsi256_ps(_mm256_and_si256(u, _mm256_set1_epi32(int(0xFFFF0000u))));
  } else if constexpr (RT == 2) {
    return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {
    return v;
  }
}

QAVX2 inline float hsum256q(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// the row's (zero, scale) per group, rounded to T, into zb / sb (F16C for fp16 scales)
template <int RT>
QAVX2 void row_params_avx2(const QP& p, int64_t n, float* zb, float* sb) {
  for (int64_t g = 0; g < p.ng; ++g) {
    const int64_t i = n * p.s_rs + g;
    const float s = p.sk == P_F16 ? _cvtsh_ss(static_cast<const uint16_t*>(p.s)[i]) : ld(p.s, i, p.sk);
    sb[g] = rnd<RT>(s);
    zb[g] = p.z ? rnd<RT>(ld(p.z, n * p.z_rs + g, p.zk)) : p.zsym;
  }
}

template <int BITS, int MB, int RT>
QAVX2 void rows_avx2(const QP& p, int64_t n0, int64_t n1, const float* x, int64_t ldx, float* y) {
  const __m256i shifts = _mm256_setr_epi32(0, BITS, 2 * BITS, 3 * BITS, 4 * BITS, 5 * BITS, 6 * BITS, 7 * BITS);
  const __m256i mask = _mm256_set1_epi32((1 << BITS) - 1);
  const __m256i sign = _mm256_set1_epi32(int(0x80000000u));
  alignas(32) uint8_t tmp[32];
  float* zb = p.zbuf;
  float* sb = p.sbuf;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* w = p.W + n * p.KB;
    __m256 acc[MB];
    for (int m = 0; m < MB; ++m) acc[m] = _mm256_setzero_ps();
    row_params_avx2<RT>(p, n, zb, sb);
    for (int64_t g = 0; g < p.ng; ++g) {
      const float z = zb[g], s = sb[g];
      const __m256 vz = _mm256_set1_ps(z), vs = _mm256_set1_ps(s), vns = _mm256_set1_ps(-s);
      const int64_t k1 = std::min(p.K, (g + 1) * p.G);
      for (int64_t k = g * p.G; k < k1; k += 8) {
        const uint8_t* c = chunk(w, k * BITS / 8, p.KB, BITS, tmp);  // 8 codes = BITS bytes
        __m256 wv;
        if constexpr (BITS == 8) {
          __m256i q = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c)));
          wv = rnd256<RT>(_mm256_mul_ps(rnd256<RT>(_mm256_sub_ps(_mm256_cvtepi32_ps(q), vz)), vs));
        } else {
          uint32_t b = 0;
          std::memcpy(&b, c, BITS);
          const __m256i q = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(b)), shifts), mask);
          if constexpr (BITS == 1) {  // -s with the sign flipped where the bit is 1
            wv = _mm256_xor_ps(vns, _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(q, 31), sign)));
          } else {
            wv = rnd256<RT>(_mm256_mul_ps(rnd256<RT>(_mm256_sub_ps(_mm256_cvtepi32_ps(q), vz)), vs));
          }
        }
        for (int m = 0; m < MB; ++m) acc[m] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + m * ldx + k), acc[m]);
      }
    }
    for (int m = 0; m < MB; ++m) y[m * p.N + n] = hsum256q(acc[m]);
  }
}

// ---------------------------------------------------------------------------------- AVX-512
#define Q512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,bmi2,fma")))

template <int RT>
Q512 inline __m512 rnd512(__m512 v) {
  if constexpr (RT == 1) {
    __m512i u = _mm512_castps_si512(v);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    u = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
    return _mm512_castsi512_ps(_mm512_and_si512(u, _mm512_set1_epi32(int(0xFFFF0000u))));
  } else if constexpr (RT == 2) {
    return _mm512_cvtph_ps(_mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  } else {
    return v;
  }
}

// 16 parameters of kind k from p[i0 .. i0+cnt) as fp32 (zeros past cnt)
Q512 inline __m512 ld16(const void* p, int64_t i0, int cnt, int k) {
  const __mmask16 mk = static_cast<__mmask16>((1u << cnt) - 1);
  switch (k) {
    case P_F16: return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mk, static_cast<const uint16_t*>(p) + i0));
    case P_BF16:
      return _mm512_castsi512_ps(_mm512_slli_epi32(
          _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mk, static_cast<const uint16_t*>(p) + i0)), 16));
    case P_U8:
      return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(mk, static_cast<const uint8_t*>(p) + i0)));
    default: return _mm512_maskz_loadu_ps(mk, static_cast<const float*>(p) + i0);
  }
}

// the row's (zero, scale) per group, rounded to T, into zb / sb
template <int RT>
Q512 void row_params512(const QP& p, int64_t n, float* zb, float* sb) {
  for (int64_t g = 0; g < p.ng; g += 16) {
    const int cnt = static_cast<int>(std::min<int64_t>(16, p.ng - g));
    const __mmask16 mk = static_cast<__mmask16>((1u << cnt) - 1);
    _mm512_mask_storeu_ps(sb + g, mk, rnd512<RT>(ld16(p.s, n * p.s_rs + g, cnt, p.sk)));
    const __m512 z = p.z ? rnd512<RT>(ld16(p.z, n * p.z_rs + g, cnt, p.zk)) : _mm512_set1_ps(p.zsym);
    _mm512_mask_storeu_ps(zb + g, mk, z);
  }
}

// MB > 0: y[m * N + n] = x_m · row n for MB x rows (x permuted, see perm_col).
// MB == 0: dequantize instead: row n's weights, in the permuted column order, as T (fp32 / the
//          bf16 or fp16 bits) into row n - n0 of y (ldx elements per row, Kp written).
template <int BITS, int MB, int RT>
Q512 void rows_avx512(const QP& p, int64_t n0, int64_t n1, const float* x, int64_t ldx, float* y) {
  const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i shA = _mm512_sub_epi32(_mm512_set1_epi32(31), lane);  // bit l -> sign (1-bit)
  const __m512i shB = _mm512_sub_epi32(_mm512_set1_epi32(15), lane);  // bit 16+l -> sign
  const __m512i sh2 = _mm512_slli_epi32(_mm512_srli_epi32(lane, 1), 2);  // 2-bit: 4 * (l / 2)
  const __m512i idxA = _mm512_and_si512(lane, _mm512_set1_epi32(3));
  const __m512i idxB = _mm512_and_si512(_mm512_srli_epi32(lane, 2), _mm512_set1_epi32(3));
  const __m512i sign = _mm512_set1_epi32(int(0x80000000u));
  // the code of each table entry, and (symmetric) its q - zero, the same for every group
  const __m512 codeA = BITS == 2 ? _mm512_cvtepi32_ps(idxA) : iota;
  const __m512 codeB = _mm512_cvtepi32_ps(idxB);
  const __m512 dsymA = rnd512<RT>(_mm512_sub_ps(codeA, _mm512_set1_ps(p.zsym)));
  const __m512 dsymB = rnd512<RT>(_mm512_sub_ps(codeB, _mm512_set1_ps(p.zsym)));
  constexpr int NBYTES = 4 * BITS;  // 32 codes
  alignas(64) uint8_t tmp[32];
  float* zb = p.zbuf;
  float* sb = p.sbuf;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* w = p.W + n * p.KB;
    __m512 acc[MB > 0 ? MB : 1][2];
    for (int m = 0; m < MB; ++m) acc[m][0] = acc[m][1] = _mm512_setzero_ps();
    row_params512<RT>(p, n, zb, sb);
    for (int64_t g = 0; g < p.ng; ++g) {
      const float z = zb[g], s = sb[g];
      __m512 tA, tB;  // 2/4-bit: the weight of each code; 8-bit: zero, scale; 1-bit: -scale
      if constexpr (BITS == 4) {
        const __m512 d = p.z ? rnd512<RT>(_mm512_sub_ps(iota, _mm512_set1_ps(z))) : dsymA;
        tA = tB = rnd512<RT>(_mm512_mul_ps(d, _mm512_set1_ps(s)));
      } else if constexpr (BITS == 2) {  // entry i -> code i & 3 (tA) and code (i >> 2) & 3 (tB)
        const __m512 vs = _mm512_set1_ps(s);
        const __m512 dA = p.z ? rnd512<RT>(_mm512_sub_ps(codeA, _mm512_set1_ps(z))) : dsymA;
        const __m512 dB = p.z ? rnd512<RT>(_mm512_sub_ps(codeB, _mm512_set1_ps(z))) : dsymB;
        tA = rnd512<RT>(_mm512_mul_ps(dA, vs));
        tB = rnd512<RT>(_mm512_mul_ps(dB, vs));
      } else if constexpr (BITS == 8) {
        tA = _mm512_set1_ps(z);
        tB = _mm512_set1_ps(s);
      } else {
        tA = tB = _mm512_set1_ps(-s);
      }
      const int64_t k1 = std::min(p.K, (g + 1) * p.G);
      for (int64_t k = g * p.G; k < k1; k += 32) {
        const uint8_t* c = chunk(w, k * BITS / 8, p.KB, NBYTES, tmp);
        __m512 wa, wb;
        if constexpr (BITS == 1) {
          uint32_t b;
          std::memcpy(&b, c, 4);
          const __m512i bv = _mm512_set1_epi32(int(b));
          // -s, sign flipped where the bit is 1: A ^ (B & C) = 0x78
          wa = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(_mm512_castps_si512(tA), _mm512_sllv_epi32(bv, shA), sign, 0x78));
          wb = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(_mm512_castps_si512(tA), _mm512_sllv_epi32(bv, shB), sign, 0x78));
        } else if constexpr (BITS == 2) {
          uint64_t b;
          std::memcpy(&b, c, 8);
          const __m512i idx = _mm512_srlv_epi32(_mm512_set1_epi64(int64_t(b)), sh2);  // vpermps reads bits 0-3
          wa = _mm512_permutexvar_ps(idx, tA);
          wb = _mm512_permutexvar_ps(idx, tB);
        } else if constexpr (BITS == 4) {
          const __m512i bv = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c)));
          wa = _mm512_permutexvar_ps(bv, tA);
          wb = _mm512_permutexvar_ps(_mm512_srli_epi32(bv, 4), tB);
        } else {
          const __m512 qa = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c))));
          const __m512 qb = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c + 16))));
          wa = rnd512<RT>(_mm512_mul_ps(rnd512<RT>(_mm512_sub_ps(qa, tA)), tB));
          wb = rnd512<RT>(_mm512_mul_ps(rnd512<RT>(_mm512_sub_ps(qb, tA)), tB));
        }
        if constexpr (MB == 0) {
          if constexpr (RT == 0) {
            float* o = y + (n - n0) * ldx + k;
            _mm512_storeu_ps(o, wa);
            _mm512_storeu_ps(o + 16, wb);
          } else {  // the values are exact in T: truncate (bf16) / convert (fp16)
            auto* o = reinterpret_cast<__m256i*>(reinterpret_cast<uint16_t*>(y) + (n - n0) * ldx + k);
            constexpr int rn = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
            _mm256_storeu_si256(o, RT == 1 ? _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(wa), 16))
                                           : _mm512_cvtps_ph(wa, rn));
            _mm256_storeu_si256(o + 1, RT == 1 ? _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_castps_si512(wb), 16))
                                               : _mm512_cvtps_ph(wb, rn));
          }
        }
        for (int m = 0; m < MB; ++m) {
          acc[m][0] = _mm512_fmadd_ps(wa, _mm512_loadu_ps(x + m * ldx + k), acc[m][0]);
          acc[m][1] = _mm512_fmadd_ps(wb, _mm512_loadu_ps(x + m * ldx + k + 16), acc[m][1]);
        }
      }
    }
    for (int m = 0; m < MB; ++m) y[m * p.N + n] = _mm512_reduce_add_ps(_mm512_add_ps(acc[m][0], acc[m][1]));
  }
}

// ---------------------------------------------------------------------------------- drivers
using RowsFn = void (*)(const QP&, int64_t, int64_t, const float*, int64_t, float*);

template <int BITS, int RT>
RowsFn pick_simd(int64_t isa, int mb) {
  if (isa == QISA_AVX512) {
    return mb == 1 ? rows_avx512<BITS, 1, RT> : mb == 4 ? rows_avx512<BITS, 4, RT> : rows_avx512<BITS, 8, RT>;
  }
  return mb == 1 ? rows_avx2<BITS, 1, RT> : mb == 4 ? rows_avx2<BITS, 4, RT> : rows_avx2<BITS, 8, RT>;
}

template <int RT>
RowsFn pick_dequant512(int bits) {
  return bits == 1 ? rows_avx512<1, 0, RT> : bits == 2 ? rows_avx512<2, 0, RT>
       : bits == 4 ? rows_avx512<4, 0, RT> : rows_avx512<8, 0, RT>;
}

template <int RT>
RowsFn pick_rt(int64_t isa, int bits, int mb) {
  switch (bits) {
    case 1: return pick_simd<1, RT>(isa, mb);
    case 2: return pick_simd<2, RT>(isa, mb);
    case 4: return pick_simd<4, RT>(isa, mb);
    default: return pick_simd<8, RT>(isa, mb);
  }
}

int rt_of(at::ScalarType dt) { return dt == at::kBFloat16 ? 1 : dt == at::kHalf ? 2 : 0; }

// dequantize rows [n0, n1) to T (row-major [n1-n0, K]) for the GEMM path
template <typename T, int RT>
void dequant_rows(const QP& p, int64_t n0, int64_t n1, T* out) {
  at::parallel_for(n0, n1, 8, [&](int64_t b, int64_t e) {
    float tbl[16];
    for (int64_t n = b; n < e; ++n) {
      const uint8_t* w = p.W + n * p.KB;
      T* o = out + (n - n0) * p.K;
      for (int64_t g = 0; g < p.ng; ++g) {
        float z, s;
        group_params<RT>(p, n, g, z, s);
        const int64_t k1 = std::min(p.K, (g + 1) * p.G);
        if (p.bits <= 4) {
          for (int q = 0; q < (1 << p.bits); ++q) tbl[q] = p.bits == 1 ? (q ? s : -s) : wval<RT>(q, z, s);
          for (int64_t k = g * p.G; k < k1; ++k) o[k] = static_cast<T>(tbl[code_at(w, k, p.bits)]);
        } else {
          for (int64_t k = g * p.G; k < k1; ++k) o[k] = static_cast<T>(wval<RT>(w[k], z, s));
        }
      }
    }
  });
}

int kind_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kHalf: return P_F16;
    case at::kBFloat16: return P_BF16;
    case at::kByte: return P_U8;
    default: return P_F32;
  }
}

at::Tensor as_param(const at::Tensor& t) {  // contiguous, in a dtype ld() reads
  const auto dt = t.scalar_type();
  const bool ok = dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kByte;
  return (ok ? t : t.to(at::kFloat)).contiguous();
}

at::Tensor run(const at::Tensor& x, const at::Tensor& packed_in, const at::Tensor& scale_in,
               const std::optional<at::Tensor>& zero_in, int64_t bits, int64_t group_size, int64_t K,
               int64_t isa, int64_t mm_threshold, const char* op) {
  TORCH_CHECK(x.device().is_cpu() && packed_in.device().is_cpu(), op, ": CPU tensors expected");
  TORCH_CHECK(packed_in.scalar_type() == at::kByte && packed_in.dim() == 2, op, ": packed must be a 2-D uint8 tensor");
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == K, op, ": x.shape[-1] must equal in_features");
  TORCH_CHECK(bits == 1 || bits == 2 || bits == 4 || bits == 8, op, ": bits must be 1, 2, 4 or 8");
  TORCH_CHECK(packed_in.size(1) * 8 >= K * bits, op, ": packed has too few columns for in_features");
  const at::ScalarType dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf, op, ": x must be float32, bfloat16 or float16");
  const at::Tensor packed = packed_in.contiguous();
  const int64_t N = packed.size(0);
  const at::Tensor scale = as_param(scale_in.dim() == 2 ? scale_in : scale_in.reshape({-1, 1}));
  const int64_t ng = scale.size(1);
  TORCH_CHECK(scale.size(0) == N || scale.size(0) == 1, op, ": scale must have out_features or 1 rows");
  TORCH_CHECK(ng == 1 || (group_size > 0 && ng == (K + group_size - 1) / group_size), op,
              ": scale must have 1 or ceil(in_features / group_size) columns");
  at::Tensor zero;
  if (zero_in.has_value() && zero_in->defined()) {
    zero = as_param(zero_in->dim() == 2 ? *zero_in : zero_in->reshape({-1, 1}));
    TORCH_CHECK(zero.size(1) == ng && (zero.size(0) == N || zero.size(0) == 1), op, ": zero must have scale's shape");
  }
  QP p;
  p.W = packed.data_ptr<uint8_t>();
  p.KB = packed.size(1);
  p.K = K;
  p.Kp = (K + 31) / 32 * 32;
  p.N = N;
  p.bits = int(bits);
  p.ng = ng;
  p.G = ng == 1 ? std::max<int64_t>(K, 1) : group_size;
  p.s = scale.data_ptr();
  p.sk = kind_of(scale);
  p.s_rs = scale.size(0) == 1 ? 0 : ng;
  p.z = zero.defined() ? zero.data_ptr() : nullptr;
  p.zk = zero.defined() ? kind_of(zero) : P_F32;
  p.z_rs = zero.defined() && zero.size(0) > 1 ? ng : 0;
  p.zsym = float(1 << (bits - 1));
  p.zbuf = p.sbuf = nullptr;

  at::Tensor x2 = x.reshape({-1, K});
  const int64_t M = x2.size(0);
  std::vector<int64_t> oshape(x.sizes().begin(), x.sizes().end());
  oshape.back() = N;
  if (M == 0 || N == 0) return at::empty({M, N}, x.options()).view(oshape);
  const int rt = rt_of(dt);

  int64_t use = isa < 0 || isa > q_best_isa() ? q_best_isa() : isa;
  if (ng > 1 && group_size % 32 != 0) use = QISA_SCALAR;  // SIMD chunks must not cross groups
  const bool perm = use == QISA_AVX512 && (bits == 2 || bits == 4);
  // x in fp32, zero padded to Kp columns; permuted for AVX-512 2/4-bit (perm_col)
  const at::Tensor xf = x2.to(at::kFloat);
  auto prologue = [&](float* xp, int64_t ldx) {
    const float* src = xf.data_ptr<float>();
    const int64_t s0 = xf.stride(0), s1 = xf.stride(1);
    int pc[32];
    for (int j = 0; j < 32; ++j) pc[j] = perm_col(int(bits), j);
    at::parallel_for(0, M, 16, [&](int64_t b, int64_t e) {
      for (int64_t m = b; m < e; ++m) {
        float* o = xp + m * ldx;
        const float* r = src + m * s0;
        for (int64_t k0 = 0; k0 < K; k0 += 32)
          for (int j = 0; j < 32; ++j) {
            const int64_t c = k0 + (perm ? pc[j] : j);
            o[k0 + j] = c < K ? r[c * s1] : 0.f;
          }
      }
    });
  };

  if (M >= mm_threshold) {  // batched: dequantize blocks of rows to T, BLAS GEMM per block
    // AVX-512: rows decoded by the GEMV's code (stored, not multiplied), in its column order, so
    // x is permuted the same way; otherwise the portable dequantization in natural order
    const bool simd = use == QISA_AVX512;
    const int64_t KW = simd ? p.Kp : K;
    at::Tensor xg = x2;
    if (simd) {
      at::Tensor xs = at::empty({M, KW}, x.options().dtype(at::kFloat));
      prologue(xs.data_ptr<float>(), KW);
      xg = xs.to(dt);
    }
    // blocks of ~1 MiB of dequantized rows: written and read back by the GEMM while still in L2
    const int64_t es = x.element_size();
    const int64_t NB = std::max<int64_t>(16, (int64_t(1) << 20) / std::max<int64_t>(KW * es, 1) / 16 * 16);
    at::Tensor y = at::empty({M, N}, x.options());
    at::Tensor wbuf = at::empty({std::min(NB, N), KW}, x.options());
    for (int64_t n0 = 0; n0 < N; n0 += NB) {
      const int64_t n1 = std::min(N, n0 + NB);
      if (simd) {
        RowsFn fn = rt == 1 ? pick_dequant512<1>(int(bits)) : rt == 2 ? pick_dequant512<2>(int(bits))
                                                                    : pick_dequant512<0>(int(bits));
        char* base = static_cast<char*>(wbuf.data_ptr());
        at::parallel_for(n0, n1, 16, [&](int64_t b, int64_t e) {
          QP pt = p;
          std::vector<float> zs(2 * (ng + 16));
          pt.zbuf = zs.data();
          pt.sbuf = zs.data() + ng + 16;
          fn(pt, b, e, nullptr, KW, reinterpret_cast<float*>(base + (b - n0) * KW * es));
        });
      } else {
        AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dt, "onebit_quant_dequant", [&] {
          scalar_t* o = wbuf.data_ptr<scalar_t>();
          if (rt == 1) dequant_rows<scalar_t, 1>(p, n0, n1, o);
          else if (rt == 2) dequant_rows<scalar_t, 2>(p, n0, n1, o);
          else dequant_rows<scalar_t, 0>(p, n0, n1, o);
        });
      }
      at::Tensor wb = wbuf.narrow(0, 0, n1 - n0);
      if (n0 == 0 && n1 == N) return at::mm(xg, wb.t()).view(oshape);
      y.narrow(1, n0, n1 - n0).copy_(at::mm(xg, wb.t()));
    }
    return y.view(oshape);
  }

  const int64_t ldx = p.Kp, Mp = (M + 7) / 8 * 8;  // GEMV: whole blocks of 8 x rows (zeros)
  at::Tensor xs = at::zeros({Mp, ldx}, x.options().dtype(at::kFloat));
  float* xp = xs.data_ptr<float>();
  prologue(xp, ldx);
  at::Tensor acc = at::empty({Mp, N}, x.options().dtype(at::kFloat));
  float* ap = acc.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, std::min<int64_t>(64, N / (4 * at::get_num_threads()) + 1));
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    QP pt = p;  // this thread's copy, with its own parameter buffers
    std::vector<float> zs(2 * (ng + 16));
    pt.zbuf = zs.data();
    pt.sbuf = zs.data() + ng + 16;
    // rows in slices of 16, so that a slice of packed rows stays in L1 while every x block uses it
    for (int64_t r0 = n0; r0 < n1; r0 += 16) {
      const int64_t r1 = std::min(n1, r0 + 16);
      for (int64_t m0 = 0; m0 < M; m0 += 8) {
        const int64_t left = M - m0;
        const int mb = left == 1 ? 1 : left <= 4 ? 4 : 8;
        const float* xm = xp + m0 * ldx;
        float* ym = ap + m0 * N;
        if (use == QISA_SCALAR) {
          if (rt == 1) rows_scalar<1>(pt, r0, r1, xm, std::min<int64_t>(left, 8), ldx, ym);
          else if (rt == 2) rows_scalar<2>(pt, r0, r1, xm, std::min<int64_t>(left, 8), ldx, ym);
          else rows_scalar<0>(pt, r0, r1, xm, std::min<int64_t>(left, 8), ldx, ym);
        } else {
          RowsFn fn = rt == 1 ? pick_rt<1>(use, int(bits), mb)
                              : rt == 2 ? pick_rt<2>(use, int(bits), mb) : pick_rt<0>(use, int(bits), mb);
          fn(pt, r0, r1, xm, ldx, ym);
        }
      }
    }
  });
  return acc.narrow(0, 0, M).to(dt).view(oshape);
}

at::Tensor quant_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                        const std::optional<at::Tensor>& zero, int64_t bits, int64_t group_size,
                        int64_t in_features, int64_t isa, int64_t mm_threshold) {
  TORCH_CHECK(bits == 2 || bits == 4 || bits == 8, "quant_linear: bits must be 2, 4 or 8");
  return run(x, packed, scale, zero, bits, group_size, in_features, isa, mm_threshold, "quant_linear");
}

at::Tensor block_sign_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scales,
                             int64_t group_size, int64_t in_features, int64_t isa, int64_t mm_threshold) {
  return run(x, packed, scales, std::nullopt, 1, group_size, in_features, isa, mm_threshold,
             "block_sign_linear");
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(onebit_cpu_quant, m) {
  m.def("best_isa() -> int", &q_best_isa);
  m.def("quant_linear(Tensor x, Tensor packed, Tensor scale, Tensor? zero, int bits, int group_size, "
        "int in_features, int isa, int mm_threshold) -> Tensor",
        &quant_linear);
  m.def("block_sign_linear(Tensor x, Tensor packed, Tensor scales, int group_size, int in_features, "
        "int isa, int mm_threshold) -> Tensor",
        &block_sign_linear);
}
