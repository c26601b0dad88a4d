// The batched path of the packed linears (M >= mm_threshold rows): tiles / blocks of weight rows
// expanded to ±1 (binary) or {-1, 0, 1} (ternary), then one BLAS GEMM per tile (MKL / oneDNN), so
// the packed weight is expanded once per tile, not once per x row.  x (xs) is already rounded as the
// reference rounds x*g; the caller's epilogue applies h / scale and rounds to the input dtype.
#include <ATen/ATen.h>

#include "onebit_cpu.h"

namespace onebit_packed {
namespace {

constexpr int64_t AVX2_TILE_BYTES = 512 * 1024;  // expanded fp32 tile: fits L2

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

}  // namespace

void gemm_avx2_f32(const at::Tensor& xs, int64_t K, const uint8_t* W, int64_t N, int64_t KB, at::Tensor& acc) {
  // tiles of weight rows expanded to ±1 fp32 (sized to stay in L2), one fp32 GEMM per tile
  const int64_t M = xs.size(0), kp = ((K + 15) / 16) * 16, ldb = std::max(kp, 8 * KB);
  // tile: 512 KiB (stays in L2 while a small batch uses it); from 128 rows 16 MiB (at 512 rows,
  // MKL capped at AVX2, 1 thread: 64 MiB tiles 1.17x dense's time, 8-16 MiB 1.02-1.08x, 2-4 MiB
  // 1.06-1.21x, swept with ONEBIT_CPU_TILE_BYTES; docs/kernels.md);
  // ONEBIT_CPU_TILE_BYTES overrides, for measurements
  const char* te = std::getenv("ONEBIT_CPU_TILE_BYTES");
  const int64_t tile_bytes = te ? std::max<int64_t>(1, std::atoll(te)) : M >= 128 ? 32 * AVX2_TILE_BYTES
                                                                                 : AVX2_TILE_BYTES;
  const int64_t NB = std::max<int64_t>(16, std::min<int64_t>(N, (tile_bytes / (4 * ldb)) / 16 * 16));
  at::Tensor xt = xs.narrow(1, 0, K);
  at::Tensor wbuf = at::empty({std::min(NB, N), ldb}, xs.options().dtype(at::kFloat));
  for (int64_t n0 = 0; n0 < N; n0 += NB) {
    const int64_t n1 = std::min(N, n0 + NB);
    float* wp = wbuf.data_ptr<float>();
    at::parallel_for(n0, n1, 8, [&](int64_t b, int64_t e) {
      expand_bin_f32_avx2(W, KB, b, e, wp + (b - n0) * ldb, ldb);
    });
    at::Tensor t = acc.narrow(1, n0, n1 - n0);  // row stride N: BLAS writes it in place (ldc)
    at::mm_out(t, xt, wbuf.narrow(0, 0, n1 - n0).narrow(1, 0, K).t());
  }
}

void gemm_expanded(const at::Tensor& xs, int64_t K, const uint8_t* W, int64_t N, int64_t KB, bool ternary,
                   bool avx512, at::ScalarType dt, at::Tensor& acc) {
  // blocks of weight rows expanded in the activation dtype, one GEMM per block (AVX-512, binary:
  // the rows are expanded with masked blends; otherwise a byte table)
  const int64_t NB = 1024, per = ternary ? 4 : 8;
  at::Tensor xt = xs.narrow(1, 0, K).to(dt);
  at::Tensor wbuf = at::empty({std::min(NB, N), KB * per}, xs.options().dtype(dt));
  const bool blend = !ternary && avx512;
  for (int64_t n0 = 0; n0 < N; n0 += NB) {
    const int64_t n1 = std::min(N, n0 + NB), ldb = KB * per;
    if (blend && dt == at::kFloat) {
      float* wp = wbuf.data_ptr<float>();
      at::parallel_for(n0, n1, 8, [&](int64_t b, int64_t e) {
        expand_bin_f32_avx512(W, KB, b, e, wp + (b - n0) * ldb, ldb);
      });
    } else if (blend) {
      auto* wp = reinterpret_cast<uint16_t*>(wbuf.data_ptr());
      const uint16_t one = dt == at::kBFloat16 ? 0x3F80 : 0x3C00;
      at::parallel_for(n0, n1, 8, [&](int64_t b, int64_t e) {
        expand_bin16_avx512(W, KB, b, e, wp + (b - n0) * ldb, ldb, one);
      });
    } else {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, dt, "onebit_unpack", [&] {
        unpack_rows<scalar_t>(W, KB, n0, n1, ternary, wbuf.data_ptr<scalar_t>());
      });
    }
    at::Tensor wb = wbuf.narrow(0, 0, n1 - n0).narrow(1, 0, K);
    at::Tensor t = acc.narrow(1, n0, n1 - n0);
    if (dt == at::kFloat)
      at::mm_out(t, xt, wb.t());  // row stride N: BLAS writes it in place (ldc)
    else
      t.copy_(at::mm(xt, wb.t()));  // the product rounded to the input dtype, as the reference
  }
}

}  // namespace onebit_packed
