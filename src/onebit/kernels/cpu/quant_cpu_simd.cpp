// AVX2 and AVX-512 kernels of quant_cpu.cpp's ops (compiled without -march: every function
// carries its own target attribute and is called only when the CPU has that ISA).  The design is
// described at the top of quant_cpu.cpp.
#include "quant_cpu.h"

#include <immintrin.h>

namespace onebit_quant {
namespace {


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

// the weights of 8 codes from byte k * BITS / 8 of row w, rounded as the reference rounds them
// (c: the BITS bytes of the 8 codes)
template <int BITS, int RT>
QAVX2 inline __m256 weights8(const uint8_t* c, __m256 vz, __m256 vs, __m256 vns) {
  if constexpr (BITS == 8) {
    const __m256i q = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c)));
    return rnd256<RT>(_mm256_mul_ps(rnd256<RT>(_mm256_sub_ps(_mm256_cvtepi32_ps(q), vz)), vs));
  } else {
    const __m256i shifts = _mm256_setr_epi32(0, BITS, 2 * BITS, 3 * BITS, 4 * BITS, 5 * BITS, 6 * BITS, 7 * BITS);
    uint32_t b = 0;
    std::memcpy(&b, c, BITS);
    const __m256i q = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(b)), shifts),
                                       _mm256_set1_epi32((1 << BITS) - 1));
    if constexpr (BITS == 1) {  // -s with the sign flipped where the bit is 1
      const __m256i sign = _mm256_set1_epi32(int(0x80000000u));
      return _mm256_xor_ps(vns, _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(q, 31), sign)));
    } else {
      return rnd256<RT>(_mm256_mul_ps(rnd256<RT>(_mm256_sub_ps(_mm256_cvtepi32_ps(q), vz)), vs));
    }
  }
}

// NA independent FMA chains per x row (NA * MB accumulators), and the codes read in place except
// in a row's last, partial chunk: with chunk() (a call with a copy path) on every 8 codes and one
// FMA chain, a decode GEMV was bound by the call, not by the arithmetic (the whole-step effect:
// bench/gguf_speed.py at AVX2, docs/kernels.md)
template <int BITS, int MB, int RT>
QAVX2 void rows_avx2(const QP& p, int64_t n0, int64_t n1, const float* x, int64_t ldx, float* y) {
  constexpr int NA = MB == 1 ? 4 : MB == 4 ? 2 : 1;
  const int64_t kin = p.KB * 8 / BITS / 8 * 8;  // codes before k + 8 <= kin lie whole in the row
  alignas(32) uint8_t tmp[32];
  float* zb = p.zbuf;
  float* sb = p.sbuf;
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* w = p.W + n * p.KB;
    __m256 acc[MB][NA];
    for (int m = 0; m < MB; ++m)
      for (int u = 0; u < NA; ++u) acc[m][u] = _mm256_setzero_ps();
    row_params_avx2<RT>(p, n, zb, sb);
    for (int64_t g = 0; g < p.ng; ++g) {
      const float z = zb[g], s = sb[g];
      const __m256 vz = _mm256_set1_ps(z), vs = _mm256_set1_ps(s), vns = _mm256_set1_ps(-s);
      const int64_t k1 = std::min(p.K, (g + 1) * p.G);
      const int64_t kd = std::min(k1, kin);
      int64_t k = g * p.G;
      for (; k + 8 * NA <= kd; k += 8 * NA)
        for (int u = 0; u < NA; ++u) {
          const __m256 wv = weights8<BITS, RT>(w + (k + 8 * u) * BITS / 8, vz, vs, vns);
          for (int m = 0; m < MB; ++m)
            acc[m][u] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + m * ldx + k + 8 * u), acc[m][u]);
        }
      for (; k < k1; k += 8) {
        const __m256 wv = weights8<BITS, RT>(chunk(w, k * BITS / 8, p.KB, BITS, tmp), vz, vs, vns);
        for (int m = 0; m < MB; ++m) acc[m][0] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + m * ldx + k), acc[m][0]);
      }
    }
    for (int m = 0; m < MB; ++m) {
      __m256 t = acc[m][0];
      for (int u = 1; u < NA; ++u) t = _mm256_add_ps(t, acc[m][u]);
      y[m * p.N + n] = hsum256q(t);
    }
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

template <int BITS, int RT>
RowsFn pick_simd(int64_t isa, int mb) {
  if (isa == QISA_AVX512) {
    return mb == 1 ? rows_avx512<BITS, 1, RT> : mb == 4 ? rows_avx512<BITS, 4, RT> : rows_avx512<BITS, 8, RT>;
  }
  return mb == 1 ? rows_avx2<BITS, 1, RT> : mb == 4 ? rows_avx2<BITS, 4, RT> : rows_avx2<BITS, 8, RT>;
}

template <int RT>
RowsFn pick_bits(int64_t isa, int bits, int mb) {
  switch (bits) {
    case 1: return pick_simd<1, RT>(isa, mb);
    case 2: return pick_simd<2, RT>(isa, mb);
    case 4: return pick_simd<4, RT>(isa, mb);
    default: return pick_simd<8, RT>(isa, mb);
  }
}

template <int RT>
RowsFn pick_dequant(int bits) {
  return bits == 1 ? rows_avx512<1, 0, RT> : bits == 2 ? rows_avx512<2, 0, RT>
       : bits == 4 ? rows_avx512<4, 0, RT> : rows_avx512<8, 0, RT>;
}

}  // namespace

RowsFn pick_rows(int64_t isa, int rt, int bits, int mb) {
  return rt == 1 ? pick_bits<1>(isa, bits, mb) : rt == 2 ? pick_bits<2>(isa, bits, mb) : pick_bits<0>(isa, bits, mb);
}

RowsFn pick_dequant512(int rt, int bits) {
  return rt == 1 ? pick_dequant<1>(bits) : rt == 2 ? pick_dequant<2>(bits) : pick_dequant<0>(bits);
}

}  // namespace onebit_quant
