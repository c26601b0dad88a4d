// int8-activation kernel over a 32-row transposed copy of the packed bits (algo=i8 on AVX2 CPUs and
// AVX-512 CPUs without VNNI, every batch size): table lookups instead of multiplies, in the style
// of T-MAC / bitnet.cpp's TL kernels, with the exact integers of the other int8 paths.
//
// Math (onebit_cpu.h, QuantX): y = 2 sum_b s_b P_b - C, P_b = sum of q over the +1 columns of
// block b (QB = 128 columns).  Per x row and per group of 4 columns (a nibble of a packed byte),
// a 16-entry table T[n] = sum_{i<4} bit_i(n) q_i holds every possible partial P (|T| <= 508:
// int16, kept as a low-byte and a high-byte table so that vpshufb can look them up).
//
// Layout: the packed weight [N, KB] is transposed in tiles of 32 rows, R[tile][j][r] =
// W[32 tile + r][j] (rows past N and bytes past KB zero), so that one 32-byte load holds byte j
// of 32 rows: its low nibbles index the table of columns 8j..8j+3, its high nibbles that of
// 8j+4..8j+7.  Per 8 columns x 32 rows: 3 ops to split the nibbles, 4 vpshufb, 4 unpacks
// (low/high bytes -> int16) and 4 adds, i.e. ~0.5 op per 8 weights against ~1.6 for the
// vpmaddubsw kernel it replaced; int16 sums of one block stay below 16 * 2 * 508 = 16256.
//
// The transposed copy is made on the first call for a weight and cached, keyed by its storage
// (held weakly: an entry dies with its tensor), data pointer, shape and version counter (an in-place
// change of the weight makes a new copy; inference tensors have none: see transposed_bits()).  It costs as much memory as the packed bits.
#include <ATen/ATen.h>
#include <c10/core/Storage.h>
#include <c10/util/intrusive_ptr.h>
#include <immintrin.h>

#include <mutex>
#include <unordered_map>

#include "onebit_cpu.h"

namespace onebit_packed {
namespace {

constexpr int64_t TILE = BITS_TILE, JB = QB / 8;  // rows per tile, packed bytes per QB block
// software prefetch of the transposed bits, one line per 64 bytes read, 8 KiB ahead, into L2 (T1):
// faster than into L1 (T0) 4 KiB ahead, as before, on the Zen 4 at
// AVX2 (python bench/kernels_ab.py --rev a74498d --isa avx2 --algo i8, docs/kernels.md)
constexpr int64_t PF_AHEAD = 8192;

struct Entry {
  c10::weak_intrusive_ptr<c10::StorageImpl> storage;
  const void* data;
  int64_t N, KB, version, layout;
  at::Tensor R;
};

// BITS_BYTES: R[tile][j][r] = W[32 tile + r][j]; BITS_DWORDS: R[tile][q][r][i] = W[16 tile + r][4q + i]
at::Tensor transpose_tiles(const uint8_t* W, int64_t N, int64_t KB, int64_t KBp, int64_t layout) {
  const int64_t rows = layout == BITS_BYTES ? TILE : 16, run = layout == BITS_BYTES ? 1 : 4;
  const int64_t tiles = (N + rows - 1) / rows;
  at::Tensor R = at::zeros({tiles, KBp * rows}, at::kByte);
  uint8_t* rp = R.data_ptr<uint8_t>();
  at::parallel_for(0, tiles, 8, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t)
      for (int64_t r = 0; r < rows && t * rows + r < N; ++r) {
        const uint8_t* w = W + (t * rows + r) * KB;
        uint8_t* o = rp + t * KBp * rows + r * run;
        int64_t j = 0;
        for (; run == 4 && j + 4 <= KB; j += 4) std::memcpy(o + j * rows, w + j, 4);  // a row's dword
        for (; j < KB; ++j) o[(j / run) * rows * run + j % run] = w[j];
      }
  });
  return R;
}

}  // namespace

// the cached transposed copy of `packed` (a contiguous [N, KB] uint8 tensor): a hash map by
// storage; dead entries are dropped when a new one is added (also used by bin_fx_lut)
at::Tensor transposed_bits(const at::Tensor& packed, int64_t KBp, int64_t layout) {
  static std::mutex mu;
  static std::unordered_map<const c10::StorageImpl*, std::vector<Entry>> cache;
  const int64_t N = packed.size(0), KB = packed.size(1);
  // an inference tensor (made under torch.inference_mode) has no version counter: its copy is kept
  // as long as its storage lives, and an in-place change of it is not seen (packed weights are frozen)
  const int64_t version = packed.is_inference() ? -1 : packed.unsafeGetTensorImpl()->version_counter().current_version();
  const c10::StorageImpl* impl = packed.storage().unsafeGetStorageImpl();
  std::lock_guard<std::mutex> lock(mu);
  auto& bucket = cache[impl];
  for (auto& e : bucket) {
    if (!e.storage.expired() && e.data == packed.data_ptr() && e.N == N && e.KB == KB && e.layout == layout) {
      if (e.version != version) {
        e.R = transpose_tiles(packed.data_ptr<uint8_t>(), N, KB, KBp, layout);
        e.version = version;
      }
      return e.R;
    }
  }
  for (auto it = cache.begin(); it != cache.end();) {  // drop what died with its tensor
    auto& v = it->second;
    v.erase(std::remove_if(v.begin(), v.end(), [](const Entry& e) { return e.storage.expired(); }), v.end());
    it = v.empty() && it->first != impl ? cache.erase(it) : std::next(it);
  }
  bucket.push_back({packed.storage().getWeakStorageImpl(), packed.data_ptr(), N, KB, version, layout,
                    transpose_tiles(packed.data_ptr<uint8_t>(), N, KB, KBp, layout)});
  return bucket.back().R;
}

namespace {

// tables of one x row: per group of 4 columns g (= nibble g%2 of packed byte g/2) 32 bytes, the
// low bytes of T[0..15] then its high bytes (the kernel broadcasts each half to both lanes).
// T for one group in SIMD: 4 broadcasts of q masked by the bit patterns of n, 3 adds, then one
// byte shuffle + one qword permute split the int16 into low and high bytes.
AVX2_TARGET void build_tables(const int8_t* q, int64_t g0, int64_t g1, int8_t* tab) {
  alignas(32) int16_t bits[4][16];
  for (int i = 0; i < 4; ++i)
    for (int n = 0; n < 16; ++n) bits[i][n] = int16_t(((n >> i) & 1) ? -1 : 0);
  __m256i B[4];
  for (int i = 0; i < 4; ++i) B[i] = _mm256_load_si256(reinterpret_cast<const __m256i*>(bits[i]));
  // per 128-bit lane: the 8 low bytes to 0-7, the 8 high bytes to 8-15
  const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                         0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  for (int64_t g = g0; g < g1; ++g) {
    const int8_t* qg = q + 4 * g;
    __m256i T = _mm256_and_si256(_mm256_set1_epi16(qg[0]), B[0]);
    for (int i = 1; i < 4; ++i) T = _mm256_add_epi16(T, _mm256_and_si256(_mm256_set1_epi16(qg[i]), B[i]));
    // [lo 0-7, hi 0-7 | lo 8-15, hi 8-15] -> qwords 0, 2, 1, 3: [lo 0-15 | hi 0-15]
    T = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(T, split), 0xD8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(tab + 32 * g), T);
  }
}

// one tile of 32 rows against one x row: fp32 sums of s_b P_b into f (32 floats, row order)
AVX2_TARGET void tile_rows(const uint8_t* R, const int8_t* tab, const float* s, int64_t nb, float* out) {
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  __m256 f[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  for (int64_t b = 0; b < nb; ++b) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, c0 = a0, c1 = a0;
    for (int64_t j = JB * b; j < JB * (b + 1); ++j) {
      if ((j & 1) == 0) _mm_prefetch(reinterpret_cast<const char*>(R + TILE * j + PF_AHEAD), _MM_HINT_T1);
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(R + TILE * j));
      const __m256i lo = _mm256_and_si256(wv, m4), hi = _mm256_and_si256(_mm256_srli_epi16(wv, 4), m4);
      const __m128i* tg = reinterpret_cast<const __m128i*>(tab + 64 * j);
      __m256i rl = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128(tg)), lo);
      __m256i rh = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128(tg + 1)), lo);
      a0 = _mm256_add_epi16(a0, _mm256_unpacklo_epi8(rl, rh));  // rows 0-7 | 16-23
      a1 = _mm256_add_epi16(a1, _mm256_unpackhi_epi8(rl, rh));  // rows 8-15 | 24-31
      rl = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128(tg + 2)), hi);
      rh = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(_mm_loadu_si128(tg + 3)), hi);
      c0 = _mm256_add_epi16(c0, _mm256_unpacklo_epi8(rl, rh));
      c1 = _mm256_add_epi16(c1, _mm256_unpackhi_epi8(rl, rh));
    }
    a0 = _mm256_add_epi16(a0, c0);
    a1 = _mm256_add_epi16(a1, c1);
    const __m256 sv = _mm256_set1_ps(s[b]);
    f[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(a0))), sv, f[0]);
    f[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(a1))), sv, f[1]);
    f[2] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(a0, 1))), sv, f[2]);
    f[3] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(a1, 1))), sv, f[3]);
  }
  for (int i = 0; i < 4; ++i) _mm256_storeu_ps(out + 8 * i, f[i]);
}

}  // namespace

void bin_i8_lut(const QuantX& qx, int64_t M, const at::Tensor& packed, float* acc) {
  const int64_t N = packed.size(0), KBp = qx.nb * JB, tiles = (N + TILE - 1) / TILE;
  const at::Tensor R = transposed_bits(packed, KBp, BITS_BYTES);
  std::vector<int8_t> tabs(size_t(M) * KBp * 64);
  const int64_t ng = 2 * KBp;  // groups of 4 columns per row
  // a decode row is split only where it is long: each parallel region costs a wake-up of the
  // other threads (a few µs, more with the short OpenMP spin of onebit.threads)
  at::parallel_for(0, M * ng, 2048, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e;) {
      const int64_t m = i / ng, g0 = i % ng, g1 = std::min(ng, g0 + (e - i));
      build_tables(qx.q.data() + m * qx.ldq, g0, g1, tabs.data() + m * ng * 32);
      i += g1 - g0;
    }
  });
  const uint8_t* rp = R.data_ptr<uint8_t>();
  // blocks of x rows whose tables (ng * 32 bytes each) fit in ~512 KiB of L2; within a block the
  // weight tiles are streamed once, each used by every row of the block.  One parallel region
  // over (row block, tile), row-block-major: a thread's share is whole row blocks where there
  // are several (prefill), a share of the tiles where there is one (decode)
  const int64_t MB = std::max<int64_t>(1, (512 * 1024) / (ng * 32)), nmb = (M + MB - 1) / MB;
  at::parallel_for(0, nmb * tiles, par_grain(KBp * TILE * std::min(M, MB), 4), [&](int64_t b, int64_t e) {
    alignas(32) float out[TILE];
    for (int64_t i = b; i < e; ++i) {
      const int64_t mb0 = (i / tiles) * MB, t = i % tiles, rows = std::min(TILE, N - t * TILE);
      for (int64_t m = mb0; m < std::min(M, mb0 + MB); ++m) {  // the tile (KBp x 32 bytes) stays in L1
        tile_rows(rp + t * KBp * TILE, tabs.data() + m * KBp * 64, qx.s.data() + m * qx.nb, qx.nb, out);
        // out: rows 0-7, 8-15, 16-23, 24-31 in order
        for (int64_t r = 0; r < rows; ++r) acc[m * N + t * TILE + r] = 2.f * out[r] - qx.c[m];
      }
    }
  });
}

}  // namespace onebit_packed
