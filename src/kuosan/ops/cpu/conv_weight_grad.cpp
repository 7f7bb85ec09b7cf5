// Weight (and bias) gradient of a 3x3, stride-1, padding-1 convolution in bfloat16 on AMX tiles
// (used by conv_backward.cpp as its "amx" route; a 1x1 convolution is the same with one tap and
// no added row or column):
//
//   dW[o, i, j, c] = sum_{b, y, x} dy[b, y, x, o] * xpad[b, y + i, x + j, c]      (channels last)
//
// A matrix product per tap (i, j) with the pixels as the reduction dimension. Flatten each image
// with one zero column after every row and one zero row after the image (row stride R = W + 1,
// image stride S = (H + 1) R): pixel (y, x) of image b sits at q = b S + y R + x, and the padded
// input it meets through tap (i, j) sits at q + i R + j, for every pixel alike. So with
//
//   A[o][q] = dy at q (zero on the added row and column),  X[f][c] = x at padded position f,
//   dW[o, i, j, :] = sum_q A[o][q] X[q + i R + j][:],
//
// nine products of one A with shifted windows of one X. Tiles: A (16 outputs x 32 pixels) needs dy
// transposed; X enters as the second operand in pixel pairs (the tile's (k, k+1) interleave), once
// per parity of the shift (once for a 1x1 kernel). Both are packed per chunk of 512 pixels into
// buffers the products then read nine times; each 32 x 32 block of dW accumulates in four tiles over
// a chunk. The pairs are interleaved by unpack instructions, which work within 128-bit lanes, so dW's
// channels come out in a fixed permuted order that the final pass (finish) undoes while it adds the
// two halves and rounds to bfloat16. Packing is a third to a half of the kernel's time at 64 channels.
//
// The extra row and column cost (H + 1)(W + 1) / (H W) of the products: 1.27x at 8x8, 1.06x at
// 32x32; oneDNN's kernel (torch 2.13) runs 2-4x slower than this at the U-Net's shapes on 2 cores
// (docs/speed.md). Each of two threads (or one thread in turn) takes half the batch into its own
// float32 sums, added at the end in one order: the result is the same every run, on 1 or 2 threads.
#include <ATen/ATen.h>
#include <omp.h>
#include <algorithm>
#include <exception>
#include <tuple>
#include <vector>

#include "amx_tiles.h"

namespace {
using namespace kuosan_amx;
#ifdef KUOSAN_AMX
// dW of a K x K kernel (K = 1 or 3, padding K / 2) summed over images [n0, n1) into acc (O, K K, C) float32; with bias (O, 16) not null, the sums of
// dy too (each row 16 copies of its output's sum: a product with a tile of ones)
void accumulate(const bf16* x, const bf16* dy, float* acc, float* bias, bf16* A, bf16* B0, bf16* B1, const bf16* zeros,
                int64_t N, int64_t C, int64_t H, int64_t W, int64_t O, int64_t K, int64_t n0, int64_t n1, int64_t Kc,
                int64_t pairs) {
  const int64_t P = K / 2, R = W + P, S = (H + P) * R, T = K * K, qe = n1 * S, npos = 2 * pairs + 2;
  if (n0 >= n1) {  // an empty half (a batch of one)
    std::fill(acc, acc + O * T * C, 0.0f);
    return;
  }
  std::vector<const bf16*> xr(npos), dr(Kc);
  load_tile_config();
  for (int64_t q0 = n0 * S; q0 < qe; q0 += Kc) {
    {  // the rows of dy and x at the chunk's positions (zeros where there is no pixel)
      int64_t n = q0 / S, y = q0 % S / R, col = q0 % R;
      for (int64_t k = 0; k < npos; ++k) {
        xr[k] = n < N && y >= P && col >= P ? x + ((n * H + y - P) * W + col - P) * C : zeros;
        if (k < Kc) dr[k] = q0 + k < qe && y < H && col < W ? dy + ((n * H + y) * W + col) * O : zeros;
        if (++col == R) {
          col = 0;
          if (++y == H + P) y = 0, ++n;
        }
      }
    }
    for (int64_t k0 = 0; k0 < Kc; k0 += 32)  // A = dy^T, (O, Kc)
      for (int64_t o0 = 0; o0 < O; o0 += 32) {
        __m512i r[32];
#pragma GCC unroll 32
        for (int i = 0; i < 32; ++i) r[i] = _mm512_loadu_si512(dr[k0 + i] + o0);
        transpose32(r);
#pragma GCC unroll 32
        for (int i = 0; i < 32; ++i) _mm512_storeu_si512(A + (o0 + i) * Kc + k0, r[i]);
      }
    for (int64_t i = 0; i < pairs; ++i) {  // B_p[i][c][j] = X[q0 + 2i + p + j][c]
      const bf16 *a = xr[2 * i], *b = xr[2 * i + 1], *d = xr[2 * i + 2];
      bf16 *o0 = B0 + i * 2 * C, *o1 = B1 + i * 2 * C;
      for (int64_t c = 0; c < C; c += 32) {
        const __m512i va = _mm512_loadu_si512(a + c), vb = _mm512_loadu_si512(b + c), vd = _mm512_loadu_si512(d + c);
        _mm512_storeu_si512(o0 + 2 * c, _mm512_unpacklo_epi16(va, vb));
        _mm512_storeu_si512(o0 + 2 * c + 32, _mm512_unpackhi_epi16(va, vb));
        if (K == 1) continue;  // one tap, at an even offset
        _mm512_storeu_si512(o1 + 2 * c, _mm512_unpacklo_epi16(vb, vd));
        _mm512_storeu_si512(o1 + 2 * c + 32, _mm512_unpackhi_epi16(vb, vd));
      }
    }
    const int64_t lda = Kc * 2, ldb = C * 4, ldc = T * C * 4;  // bytes
    if (bias) {
      static const std::vector<bf16> ones(16 * 32, bf16(1.f));
      _tile_loadd(6, ones.data(), 64);
      for (int64_t m0 = 0; m0 < O; m0 += 32) {
        _tile_loadd(0, bias + m0 * 16, 64);
        _tile_loadd(1, bias + (m0 + 16) * 16, 64);
        for (int64_t k = 0; k < Kc; k += 32) {
          _tile_loadd(4, A + m0 * Kc + k, lda);
          _tile_loadd(5, A + (m0 + 16) * Kc + k, lda);
          _tile_dpbf16ps(0, 4, 6);
          _tile_dpbf16ps(1, 5, 6);
        }
        _tile_stored(0, bias + m0 * 16, 64);
        _tile_stored(1, bias + (m0 + 16) * 16, 64);
      }
    }
    for (int64_t m0 = 0; m0 < O; m0 += 32)
      for (int64_t c0 = 0; c0 < C; c0 += 32)
        for (int64_t s = 0; s < T; ++s) {  // tiles 0-3: dW block; 4, 5: A rows; 6, 7: B columns
          const int64_t off = s / K * R + s % K;
          const bf16* b = (off & 1 ? B1 : B0) + (off >> 1) * 2 * C + 2 * c0;
          const bf16* a = A + m0 * Kc;
          float* d = acc + m0 * T * C + s * C + c0;
          if (q0 == n0 * S) {  // the first chunk starts the sums
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
          } else {
            _tile_loadd(0, d, ldc);
            _tile_loadd(1, d + 16, ldc);
            _tile_loadd(2, d + 16 * T * C, ldc);
            _tile_loadd(3, d + 16 * T * C + 16, ldc);
          }
          for (int64_t k = 0; k < Kc; k += 32) {
            _tile_loadd(4, a + k, lda);
            _tile_loadd(5, a + 16 * Kc + k, lda);
            _tile_loadd(6, b + k * C, ldb);
            _tile_loadd(7, b + k * C + 32, ldb);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
          }
          _tile_stored(0, d, ldc);
          _tile_stored(1, d + 16, ldc);
          _tile_stored(2, d + 16 * T * C, ldc);
          _tile_stored(3, d + 16 * T * C + 16, ldc);
        }
  }
  _tile_release();
}

// out rows [r0, r1) of 32 channels = a0 + a1, in channel order: column j of each 32-channel block of
// the sums holds channel 8 (j % 16 / 4) + 4 (j / 16) + j % 4 (the order of the unpack instructions'
// lanes in the packed x); bfloat16 rounded to nearest even, or float32
void finish(const float* a0, const float* a1, void* out, bool bf16_out, int64_t r0, int64_t r1) {
  alignas(64) int32_t from[32];
  for (int j = 0; j < 32; ++j) from[8 * (j % 16 / 4) + 4 * (j / 16) + j % 4] = j;
  const __m512i f0 = _mm512_load_si512(from), f1 = _mm512_load_si512(from + 16);
  for (int64_t r = r0 * 32; r < r1 * 32; r += 32) {
    const __m512 lo = _mm512_add_ps(_mm512_loadu_ps(a0 + r), _mm512_loadu_ps(a1 + r));
    const __m512 hi = _mm512_add_ps(_mm512_loadu_ps(a0 + r + 16), _mm512_loadu_ps(a1 + r + 16));
    const __m512 u = _mm512_permutex2var_ps(lo, f0, hi), v = _mm512_permutex2var_ps(lo, f1, hi);
    if (bf16_out) {
      _mm512_storeu_si512((char*)out + 2 * r, (__m512i)_mm512_cvtne2ps_pbh(v, u));
    } else {
      _mm512_storeu_ps((float*)out + r, u);
      _mm512_storeu_ps((float*)out + r + 16, v);
    }
  }
}
#endif
}  // namespace

bool amx_weight_grad_available() {
#ifdef KUOSAN_AMX
  // the kernel's permission for the tile registers (ARCH_REQ_XCOMP_PERM for XTILEDATA); PyTorch's
  // oneDNN asks the same, so it normally holds already
  static const bool ok = syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  return ok;
#else
  return false;
#endif
}

// bfloat16 channels-last x and dy, a 1x1 or 3x3 kernel with stride 1 and padding kernel / 2,
// channels multiples of 32 (callers check that there are no groups or dilation), and torch on at most
// two threads: the kernel splits the batch in two, so with more cores oneDNN's kernel, which uses
// them all, is the better choice (timed only on this 2-core machine)
bool amx_weight_grad_applies(const at::Tensor& x, const at::Tensor& dy, const at::Tensor& w,
                             const std::vector<int64_t>& stride, const std::vector<int64_t>& padding) {
  const auto cl = at::MemoryFormat::ChannelsLast;
  const int64_t k = w.size(2);
  return x.scalar_type() == at::kBFloat16 && dy.scalar_type() == at::kBFloat16 && (k == 1 || k == 3) &&
         w.size(3) == k && stride[0] == 1 && stride[1] == 1 && padding[0] == k / 2 && padding[1] == k / 2 &&
         x.size(0) > 0 && x.size(1) % 32 == 0 && w.size(0) % 32 == 0 && x.is_contiguous(cl) &&
         dy.is_contiguous(cl) && !omp_in_parallel() && omp_get_max_threads() <= 2 && amx_weight_grad_available();
}

// dW (O, C, k, k) in w's dtype and layout, and with need_bias dbias (O)
std::tuple<at::Tensor, at::Tensor> amx_weight_grad(const at::Tensor& dy, const at::Tensor& x,
                                                         const at::Tensor& w, bool need_bias) {
#ifdef KUOSAN_AMX
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), O = dy.size(1), K = w.size(2);
  const int64_t P = K / 2, R = W + P, S = (H + P) * R;
  // chunks of 512 pixels, or a half's pixels rounded up to a tile's 32 when fewer
  const int64_t Kc = std::min<int64_t>(512, ((N - N / 2) * S + 31) / 32 * 32);
  const int64_t pairs = Kc / 2 + P * (R + 1) + 2;  // pixel pairs of X the windows of a chunk reach
  const auto opts = x.options().memory_format(at::MemoryFormat::Contiguous);
  auto acc = at::empty({2, O * K * K * C}, opts.dtype(at::kFloat));
  auto a_buf = at::empty({2, O * Kc}, opts), b_buf = at::empty({2, 2, pairs * 2 * C}, opts);
  auto zeros = at::zeros({std::max(C, O)}, opts);
  auto bias = at::zeros({2, need_bias ? O * 16 : 0}, opts.dtype(at::kFloat));
  // (O, k, k, C) memory is the channels-last layout of (O, C, k, k)
  auto dw = at::empty({O, K, K, C}, opts.dtype(w.scalar_type()));
  const int64_t rows = O * K * K * C / 32;
  std::exception_ptr error;
  // two threads, or one where torch runs on one (torch.set_num_threads(1), OMP_NUM_THREADS=1: a
  // second thread would compete with the other processes the user placed on the other cores)
#pragma omp parallel num_threads(std::min(2, omp_get_max_threads()))
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    // half h on thread h; a smaller team (one thread, OMP_DYNAMIC, a thread limit) runs both halves in turn
    for (int h = t; h < 2; h += nt) {
      try {
        accumulate((const bf16*)x.data_ptr(), (const bf16*)dy.data_ptr(), acc[h].data_ptr<float>(),
                   need_bias ? bias[h].data_ptr<float>() : nullptr, (bf16*)a_buf[h].data_ptr(),
                   (bf16*)b_buf[h][0].data_ptr(), (bf16*)b_buf[h][1].data_ptr(), (const bf16*)zeros.data_ptr(), N, C,
                   H, W, O, K, h ? N / 2 : 0, h ? N : N / 2, Kc, pairs);
      } catch (...) {
#pragma omp critical
        error = std::current_exception();
      }
    }
#pragma omp barrier
    // dW = acc[0] + acc[1], each thread a share of the rows
    if (!error) finish(acc[0].data_ptr<float>(), acc[1].data_ptr<float>(), dw.data_ptr(),
                       dw.scalar_type() == at::kBFloat16, rows * t / nt, rows * (t + 1) / nt);
  }
  if (error) std::rethrow_exception(error);
  at::Tensor db;
  if (need_bias) db = (bias[0] + bias[1]).view({O, 16}).select(1, 0).to(w.scalar_type());
  return {dw.permute({0, 3, 1, 2}).contiguous(w.suggest_memory_format()), db};
#else
  TORCH_CHECK(false, "kuosan: built without AMX");
#endif
}
