// Multi-head self-attention, softmax(Q K^T * scale) V (Vaswani et al. 2017, Eq. 1), in bfloat16 on
// AMX tiles, one (image, head) at a time with everything it touches in the core's cache:
//
//   forward    S = Q K^T,  P = softmax(scale S) (float32 rows, rounded to bf16),  O = P V
//   backward   dP = dO V^T,  dS = scale P (dP - rowsum(P dP)),  dQ = dS K,  dK = dS^T Q,  dV = P^T dO
//
// Q, K, V are read in place from the qkv projection's output (B, N, 3, heads, d), and dQ, dK, dV
// are written into one tensor of that layout, so the block needs no copies of q, k, v and no
// concatenation of their gradients. The forward saves P (B, heads, N, N) for the backward. S and
// dP stay float32 (the PyTorch route rounds them to bf16: this is at least as accurate).
//
// A tile product C (16 x 16 float32) += A (16 x 32 bf16, rows) . B (32 x 16 bf16 as 16 rows of
// 16 column pairs): the second operand is stored "packed", row kk holding (B[2kk][n], B[2kk+1][n])
// for every n. Packed forms needed here: of a matrix's rows in pairs (V for P V, K for dS K, Q for
// dS^T Q, dO for P^T dO) and of a matrix's transpose (K^T for Q K^T, V^T for dO V^T), which is a
// transpose of 32-bit pairs. P^T and dS^T as first operands are 16-bit transposes.
#include <ATen/ATen.h>
#include <omp.h>
#include <algorithm>
#include <cmath>
#include <exception>
#include <memory>
#include <tuple>
#include <vector>

#include "amx_tiles.h"
#include "vec_math.h"

namespace {
using namespace kuosan_amx;
#ifdef KUOSAN_AMX
using kuosan_vec::exp16;  // AMX implies AVX-512F, which vec_math.h needs
// C (M x Nc float32, row stride ldc) = A (M x K bf16 rows, row stride lda) . B (packed, K / 2 rows of
// Nc pairs); M, Nc and K multiples of 32. Each 32 x 32 block of C is four accumulator tiles.
void gemm(const bf16* A, int64_t lda, const bf16* B, float* C, int64_t ldc, int64_t M, int64_t Nc, int64_t K) {
  for (int64_t m0 = 0; m0 < M; m0 += 32)
    for (int64_t n0 = 0; n0 < Nc; n0 += 32) {
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int64_t k = 0; k < K; k += 32) {
        _tile_loadd(4, A + m0 * lda + k, lda * 2);
        _tile_loadd(5, A + (m0 + 16) * lda + k, lda * 2);
        _tile_loadd(6, B + k * Nc + 2 * n0, Nc * 4);
        _tile_loadd(7, B + k * Nc + 2 * (n0 + 16), Nc * 4);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      _tile_stored(0, C + m0 * ldc + n0, ldc * 4);
      _tile_stored(1, C + m0 * ldc + n0 + 16, ldc * 4);
      _tile_stored(2, C + (m0 + 16) * ldc + n0, ldc * 4);
      _tile_stored(3, C + (m0 + 16) * ldc + n0 + 16, ldc * 4);
    }
}

// out (R / 2 rows of C pairs) = the rows of X (R x C, row stride ldx) in pairs: out[r / 2][c] = (X[r][c], X[r + 1][c])
void pack_rows(const bf16* X, int64_t ldx, int64_t R, int64_t C, bf16* out) {
  alignas(64) int16_t lo[32], hi[32];
  for (int j = 0; j < 32; ++j) lo[j] = (j & 1) * 32 + j / 2, hi[j] = (j & 1) * 32 + 16 + j / 2;
  const __m512i il = _mm512_load_si512(lo), ih = _mm512_load_si512(hi);
  for (int64_t r = 0; r < R; r += 2)
    for (int64_t c = 0; c < C; c += 32) {
      const __m512i a = _mm512_loadu_si512(X + r * ldx + c), b = _mm512_loadu_si512(X + (r + 1) * ldx + c);
      _mm512_storeu_si512(out + r * C + 2 * c, _mm512_permutex2var_epi16(a, il, b));
      _mm512_storeu_si512(out + r * C + 2 * c + 32, _mm512_permutex2var_epi16(a, ih, b));
    }
}

// out (C / 2 rows of R pairs) = X^T packed: out[c / 2][r] = (X[r][c], X[r][c + 1]), a transpose of
// X's 32-bit pairs (X: R x C, row stride ldx; R, C multiples of 16 and 32)
void pack_transposed(const bf16* X, int64_t ldx, int64_t R, int64_t C, bf16* out) {
  for (int64_t r0 = 0; r0 < R; r0 += 16)
    for (int64_t c0 = 0; c0 < C; c0 += 32) {
      __m512i r[16];
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(X + (r0 + i) * ldx + c0);
      transpose16x32(r);
#pragma GCC unroll 16
      for (int j = 0; j < 16; ++j) _mm512_storeu_si512(out + (c0 / 2 + j) * 2 * R + 2 * r0, r[j]);
    }
}

// out (C x R, row stride R) = X^T for X (R x C, row stride ldx), R and C multiples of 32
void transpose(const bf16* X, int64_t ldx, int64_t R, int64_t C, bf16* out) {
  for (int64_t r0 = 0; r0 < R; r0 += 32)
    for (int64_t c0 = 0; c0 < C; c0 += 32) {
      __m512i r[32];
#pragma GCC unroll 32
      for (int i = 0; i < 32; ++i) r[i] = _mm512_loadu_si512(X + (r0 + i) * ldx + c0);
      transpose32(r);
#pragma GCC unroll 32
      for (int j = 0; j < 32; ++j) _mm512_storeu_si512(out + (c0 + j) * R + r0, r[j]);
    }
}


inline void store_bf16(bf16* out, __m512 v) { _mm256_storeu_si256((__m256i*)out, (__m256i)_mm512_cvtneps_pbh(v)); }

// P (N x M bf16, row stride ldp) = softmax over each row of scale * S (N x M float32, row stride lds)
void softmax_rows(float* S, int64_t lds, int64_t N, int64_t M, float scale, bf16* P, int64_t ldp) {
  const __m512 sc = _mm512_set1_ps(scale);
  for (int64_t i = 0; i < N; ++i) {
    float* s = S + i * lds;
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < M; j += 16) mx = _mm512_max_ps(mx, _mm512_loadu_ps(s + j));
    const __m512 shift = _mm512_mul_ps(_mm512_set1_ps(_mm512_reduce_max_ps(mx)), sc);
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < M; j += 16) {
      const __m512 e = exp16(_mm512_fmsub_ps(_mm512_loadu_ps(s + j), sc, shift));
      _mm512_storeu_ps(s + j, e);
      sum = _mm512_add_ps(sum, e);
    }
    const __m512 inv = _mm512_set1_ps(1.f / _mm512_reduce_add_ps(sum));
    for (int64_t j = 0; j < M; j += 16) store_bf16(P + i * ldp + j, _mm512_mul_ps(_mm512_loadu_ps(s + j), inv));
  }
}

// dS (N x M bf16, row stride lds) = scale * P (dP - rowsum(P dP)), dP float32 (row stride ldg), P bf16 (row stride ldp)
void softmax_backward_rows(const float* dP, int64_t ldg, const bf16* P, int64_t ldp, int64_t N, int64_t M, float scale,
                           bf16* dS, int64_t lds) {
  for (int64_t i = 0; i < N; ++i) {
    const float* g = dP + i * ldg;
    const bf16* p = P + i * ldp;
    auto load_p = [&](int64_t j) {  // 16 bf16 -> float32: the bits in the upper half
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)(p + j))), 16));
    };
    __m512 dot = _mm512_setzero_ps();
    for (int64_t j = 0; j < M; j += 16) dot = _mm512_fmadd_ps(load_p(j), _mm512_loadu_ps(g + j), dot);
    const __m512 r = _mm512_set1_ps(_mm512_reduce_add_ps(dot)), sc = _mm512_set1_ps(scale);
    for (int64_t j = 0; j < M; j += 16)
      store_bf16(dS + i * lds + j, _mm512_mul_ps(_mm512_mul_ps(load_p(j), sc), _mm512_sub_ps(_mm512_loadu_ps(g + j), r)));
  }
}

// out (Rp x C, row stride C) = the R rows of X (row stride ldx), then Rp - R rows of zeros
void copy_padded(const bf16* X, int64_t ldx, int64_t R, int64_t Rp, int64_t C, bf16* out) {
  for (int64_t r = 0; r < R; ++r) std::copy(X + r * ldx, X + r * ldx + C, out + r * C);
  std::fill(out + R * C, out + Rp * C, bf16(0.f));
}

// out rows (row stride ldo) = C (R x Cn float32, row stride Cn) rounded to bf16
void store_rows(const float* C, int64_t R, int64_t Cn, bf16* out, int64_t ldo) {
  for (int64_t i = 0; i < R; ++i)
    for (int64_t j = 0; j < Cn; j += 16) store_bf16(out + i * ldo + j, _mm512_loadu_ps(C + i * Cn + j));
}

// runs body(item, thread scratch) for items [0, n) on up to two threads (like conv_weight_grad.cpp)
template <typename F>
void for_items(int64_t n, int64_t scratch_bytes, F body) {
  std::exception_ptr error;
#pragma omp parallel num_threads(std::min(2, omp_get_max_threads()))
  {
    std::unique_ptr<char[]> scratch(new char[scratch_bytes + 64]);
    char* buf = (char*)(((uintptr_t)scratch.get() + 63) / 64 * 64);
    load_tile_config();
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    try {
      for (int64_t i = n * t / nt; i < n * (t + 1) / nt; ++i) body(i, buf);
    } catch (...) {
#pragma omp critical
      error = std::current_exception();
    }
    _tile_release();
  }
  if (error) std::rethrow_exception(error);
}
#endif
}  // namespace

bool amx_weight_grad_available();

// qkv (B, N, 3 heads d) bf16 contiguous; N a multiple of 16 (up to 1024), d of 32, on at most two threads
bool amx_attention_applies(const at::Tensor& qkv, int64_t heads) {
  if (qkv.dim() != 3 || qkv.scalar_type() != at::kBFloat16 || !qkv.is_contiguous() || heads < 1 ||
      qkv.size(2) % (3 * heads))
    return false;
  const int64_t N = qkv.size(1), d = qkv.size(2) / (3 * heads);
  return N % 16 == 0 && N > 0 && N <= 1024 && d % 32 == 0 && qkv.size(0) > 0 && !omp_in_parallel() &&
         omp_get_max_threads() <= 2 && amx_weight_grad_available();
}

#ifdef KUOSAN_AMX
namespace {
// Per (image, head): the token count N padded to Np, a multiple of 32 (the tile grid). With N < Np,
// q, k, v (and dO) are first copied into zero-padded (Np x d) scratch, P and dS get zero columns
// (no weight on the added keys) and rows, and only the first N rows of each result are stored.
struct Item {
  int64_t N, Np, d;
  bool padded() const { return Np != N; }
};

// (pointer, row stride) of an (N x d) operand at x with row stride ld: itself, or its padded copy in buf
std::pair<const bf16*, int64_t> operand(const Item& it, const bf16* x, int64_t ld, bf16* buf) {
  if (!it.padded()) return {x, ld};
  copy_padded(x, ld, it.N, it.Np, it.d, buf);
  return {buf, it.d};
}
}  // namespace
#endif

// out (B, N, heads d) bf16 and P (B, heads, N, N) bf16
std::tuple<at::Tensor, at::Tensor> amx_attention_forward(const at::Tensor& qkv, int64_t heads, double scale) {
#ifdef KUOSAN_AMX
  TORCH_CHECK(amx_attention_applies(qkv, heads), "kuosan: the AMX attention kernel does not take this qkv");
  const int64_t B = qkv.size(0), N = qkv.size(1), C = qkv.size(2) / 3, d = C / heads;
  const Item it{N, (N + 31) / 32 * 32, d};
  const int64_t Np = it.Np;
  auto out = at::empty({B, N, C}, qkv.options());
  auto P = at::empty({B, heads, N, N}, qkv.options());
  const bf16* x = (const bf16*)qkv.data_ptr();
  bf16 *o = (bf16*)out.data_ptr(), *p = (bf16*)P.data_ptr();
  // scratch: S (Np x Np float32), packed K^T and V (Np d bf16 each), O (Np x d float32); if padded,
  // P (Np x Np bf16) and padded q, k, v (Np d bf16 each)
  const int64_t s_bytes = Np * Np * 4, pk_bytes = Np * d * 2, o_bytes = Np * d * 4;
  const int64_t pad_bytes = it.padded() ? Np * Np * 2 + 3 * pk_bytes : 0;
  for_items(B * heads, s_bytes + 2 * pk_bytes + o_bytes + pad_bytes, [&](int64_t item, char* buf) {
    const int64_t b = item / heads, h = item % heads;
    float* S = (float*)buf;
    bf16 *Kt = (bf16*)(buf + s_bytes), *Vp = (bf16*)(buf + s_bytes + pk_bytes);
    float* O = (float*)(buf + s_bytes + 2 * pk_bytes);
    bf16* pad = (bf16*)(buf + s_bytes + 2 * pk_bytes + o_bytes);  // P, then q, k, v
    const bf16* q0 = x + b * N * 3 * C + h * d;
    const auto [q, ldq] = operand(it, q0, 3 * C, pad + Np * Np);
    const auto [k, ldk] = operand(it, q0 + C, 3 * C, pad + Np * Np + Np * d);
    const auto [v, ldv] = operand(it, q0 + 2 * C, 3 * C, pad + Np * Np + 2 * Np * d);
    bf16* pi = p + item * N * N;
    pack_transposed(k, ldk, Np, d, Kt);
    gemm(q, ldq, Kt, S, Np, Np, Np, d);
    if (it.padded()) {  // softmax over the N keys into the zeroed padded P, then its N x N block saved
      std::fill(pad, pad + Np * Np, bf16(0.f));
      softmax_rows(S, Np, N, N, (float)scale, pad, Np);
      for (int64_t i = 0; i < N; ++i) std::copy(pad + i * Np, pad + i * Np + N, pi + i * N);
    } else {
      softmax_rows(S, Np, N, N, (float)scale, pi, N);
    }
    pack_rows(v, ldv, Np, d, Vp);
    gemm(it.padded() ? pad : pi, Np, Vp, O, d, Np, d, Np);
    store_rows(O, N, d, o + b * N * C + h * d, C);
  });
  return {out, P};
#else
  TORCH_CHECK(false, "kuosan: built without AMX");
#endif
}

// dqkv (B, N, 3 heads d) bf16 from dout (B, N, heads d), qkv and the forward's P
at::Tensor amx_attention_backward(const at::Tensor& dout_, const at::Tensor& qkv, const at::Tensor& P,
                                     int64_t heads, double scale) {
#ifdef KUOSAN_AMX
  TORCH_CHECK(amx_attention_applies(qkv, heads) && P.is_contiguous() && P.scalar_type() == at::kBFloat16 &&
                  dout_.numel() * 3 == qkv.numel() && P.numel() == qkv.size(0) * heads * qkv.size(1) * qkv.size(1),
              "kuosan: the AMX attention backward does not take these tensors");
  const auto dout = dout_.to(at::kBFloat16).contiguous();
  const int64_t B = qkv.size(0), N = qkv.size(1), C = qkv.size(2) / 3, d = C / heads;
  const Item it{N, (N + 31) / 32 * 32, d};
  const int64_t Np = it.Np;
  auto dqkv = at::empty_like(qkv);
  const bf16 *x = (const bf16*)qkv.data_ptr(), *g = (const bf16*)dout.data_ptr(), *p = (const bf16*)P.data_ptr();
  bf16* dx = (bf16*)dqkv.data_ptr();
  // scratch: dP (Np x Np float32), dS and a transpose (Np x Np bf16 each), a packed operand (Np d
  // bf16), a product (Np x d float32); if padded, P (Np x Np bf16) and padded q, k, v, dO (Np d each)
  const int64_t s_bytes = Np * Np * 4, t_bytes = Np * Np * 2, pk_bytes = Np * d * 2, o_bytes = Np * d * 4;
  const int64_t pad_bytes = it.padded() ? t_bytes + 4 * pk_bytes : 0;
  for_items(B * heads, s_bytes + 2 * t_bytes + pk_bytes + o_bytes + pad_bytes, [&](int64_t item, char* buf) {
    const int64_t b = item / heads, h = item % heads;
    float* dP = (float*)buf;
    bf16 *dS = (bf16*)(buf + s_bytes), *T = (bf16*)(buf + s_bytes + t_bytes);
    bf16* pk = (bf16*)(buf + s_bytes + 2 * t_bytes);
    float* R = (float*)(buf + s_bytes + 2 * t_bytes + pk_bytes);
    bf16* pad = (bf16*)(buf + s_bytes + 2 * t_bytes + pk_bytes + o_bytes);  // P, then q, k, v, dO
    const int64_t row = b * N * 3 * C + h * d;
    const auto [q, ldq] = operand(it, x + row, 3 * C, pad + Np * Np);
    const auto [k, ldk] = operand(it, x + row + C, 3 * C, pad + Np * Np + Np * d);
    const auto [v, ldv] = operand(it, x + row + 2 * C, 3 * C, pad + Np * Np + 2 * Np * d);
    const auto [dO, ldo] = operand(it, g + b * N * C + h * d, C, pad + Np * Np + 3 * Np * d);
    const bf16* pi = p + item * N * N;
    if (it.padded()) {  // P with zero columns and rows
      bf16* pp = pad;
      std::fill(pp, pp + Np * Np, bf16(0.f));
      for (int64_t i = 0; i < N; ++i) std::copy(pi + i * N, pi + (i + 1) * N, pp + i * Np);
      pi = pp;
      std::fill(dS, dS + Np * Np, bf16(0.f));
    }
    bf16 *dq = dx + row, *dk = dq + C, *dv = dq + 2 * C;
    pack_transposed(v, ldv, Np, d, pk);  // dP = dO V^T
    gemm(dO, ldo, pk, dP, Np, Np, Np, d);
    softmax_backward_rows(dP, Np, pi, Np, N, N, (float)scale, dS, Np);
    pack_rows(k, ldk, Np, d, pk);  // dQ = dS K
    gemm(dS, Np, pk, R, d, Np, d, Np);
    store_rows(R, N, d, dq, 3 * C);
    transpose(dS, Np, Np, Np, T);  // dK = dS^T Q
    pack_rows(q, ldq, Np, d, pk);
    gemm(T, Np, pk, R, d, Np, d, Np);
    store_rows(R, N, d, dk, 3 * C);
    transpose(pi, Np, Np, Np, T);  // dV = P^T dO
    pack_rows(dO, ldo, Np, d, pk);
    gemm(T, Np, pk, R, d, Np, d, Np);
    store_rows(R, N, d, dv, 3 * C);
  });
  return dqkv;
#else
  TORCH_CHECK(false, "kuosan: built without AMX");
#endif
}
