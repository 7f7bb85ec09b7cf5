// Fused GroupNorm + per-sample affine + optional SiLU for channels-last CPU tensors, forward and
// backward (built on first use by kuosan/networks/fused.py; see its docstring for the math).
//
// Layout: x is (B, N, C) with N = H * W pixels and C channels contiguous (a channels-last
// (B, C, H, W) tensor seen as its storage). Groups are G contiguous runs of Cg = C / G channels.
//   x'      = x + e[b, c]                                 (optional additive input, e.g. DDPM's time embedding)
//   mu, var = mean and biased variance of x' over (N, Cg)  per (b, g), two-pass, float32
//   z       = (x' - mu) * rstd * W[b, c] + Bias[b, c]      rstd = 1 / sqrt(var + eps)
//   y       = SiLU(z) if act else z
// The backward recomputes z from x (nothing but x and the (B, G) statistics is saved) and returns
// dx, de = sum_n dx', dW = sum_n dz * xhat, dBias = sum_n dz, all per sample, so no reduction
// crosses threads (the caller sums over the batch where W/Bias are shared parameters).
// Statistics and accumulations are float32 for bfloat16 and float32 inputs alike.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

inline float load(const float* p, int64_t i) { return p[i]; }
inline float load(const uint16_t* p, int64_t i) {
  uint32_t bits = static_cast<uint32_t>(p[i]) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline void store(float* p, int64_t i, float v) { p[i] = v; }
inline void store(uint16_t* p, int64_t i, float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  bits += 0x7FFFu + ((bits >> 16) & 1u);  // round to nearest even (inputs are finite)
  p[i] = static_cast<uint16_t>(bits >> 16);
}

// exp(x) as 2^k * p(r), r = x - k ln2 in [-ln2/2, ln2/2], p the degree-6 Taylor polynomial
// (relative error < 2e-7 over the clamped range): plain arithmetic, so the compiler vectorises it.
inline float fast_exp(float x) {
  x = std::fmin(std::fmax(x, -87.0f), 88.0f);
  const float k = std::nearbyint(x * 1.44269504f);
  const float r = (x - k * 0.693145752f) - k * 1.42860677e-6f;
  float p = 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline float sigmoid(float z) { return 1.0f / (1.0f + fast_exp(-z)); }

// The per-channel coefficients of sample b with z = x * a[c] + d[c]:
// a = rstd_g * W[b, c], d = Bias[b, c] + (e[b, c] - mu_g) * a (ec holds e[b, :], zeros without e).
inline void fold_affine(int64_t b, int64_t C, int64_t G, const float* mean, const float* rstd, const float* W,
                        const float* Bi, const float* ec, float* a, float* d) {
  const int64_t Cg = C / G;
  for (int64_t c = 0; c < C; ++c) {
    const int64_t g = c / Cg;
    a[c] = rstd[b * G + g] * W[b * C + c];
    d[c] = Bi[b * C + c] + (ec[c] - mean[b * G + g]) * a[c];
  }
}

template <typename T>
void forward_kernel(const T* x, const float* e, const float* W, const float* Bi, T* y, float* mean, float* rstd,
                    int64_t B, int64_t N, int64_t C, int64_t G, float eps, bool act) {
  const int64_t Cg = C / G;
  const double M = static_cast<double>(N * Cg);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> acc(C), mc(C), a(C), d(C), ec(C, 0.0f);
    for (int64_t b = b0; b < b1; ++b) {
      const T* xb = x + b * N * C;
      T* yb = y + b * N * C;
      if (e) for (int64_t c = 0; c < C; ++c) ec[c] = e[b * C + c];
      float* __restrict accp = acc.data();
      const float* __restrict ep = ec.data();
      const float* __restrict mp = mc.data();
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t n = 0; n < N; ++n) {
        const T* __restrict xr = xb + n * C;
        for (int64_t c = 0; c < C; ++c) accp[c] += load(xr, c) + ep[c];
      }
      for (int64_t g = 0; g < G; ++g) {
        double s = 0;
        for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) s += acc[c];
        mean[b * G + g] = static_cast<float>(s / M);
        for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) mc[c] = mean[b * G + g];
      }
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t n = 0; n < N; ++n) {
        const T* __restrict xr = xb + n * C;
        for (int64_t c = 0; c < C; ++c) {
          const float v = load(xr, c) + ep[c] - mp[c];
          accp[c] += v * v;
        }
      }
      for (int64_t g = 0; g < G; ++g) {
        double s = 0;
        for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) s += acc[c];
        rstd[b * G + g] = static_cast<float>(1.0 / std::sqrt(s / M + eps));
      }
      fold_affine(b, C, G, mean, rstd, W, Bi, ec.data(), a.data(), d.data());
      const float* __restrict ap = a.data();
      const float* __restrict dp = d.data();
      for (int64_t n = 0; n < N; ++n) {
        const T* __restrict xr = xb + n * C;
        T* __restrict yr = yb + n * C;
        if (act) {
          for (int64_t c = 0; c < C; ++c) {
            const float z = load(xr, c) * ap[c] + dp[c];
            store(yr, c, z * sigmoid(z));
          }
        } else {
          for (int64_t c = 0; c < C; ++c) store(yr, c, load(xr, c) * ap[c] + dp[c]);
        }
      }
    }
  });
}

template <typename T>
void backward_kernel(const T* dy, const T* x, const float* e, const float* W, const float* Bi, const float* mean,
                     const float* rstd, T* dx, float* de, float* dW, float* dB, int64_t B, int64_t N, int64_t C,
                     int64_t G, bool act) {
  const int64_t Cg = C / G;
  const float M = static_cast<float>(N * Cg);
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> dz(N * C), s1(C), s2(C), a(C), d(C), ec(C, 0.0f), P(C), Q(C), R(C), dec(C);
    for (int64_t b = b0; b < b1; ++b) {
      const T* xb = x + b * N * C;
      const T* gb = dy + b * N * C;
      T* dxb = dx + b * N * C;
      if (e) for (int64_t c = 0; c < C; ++c) ec[c] = e[b * C + c];
      fold_affine(b, C, G, mean, rstd, W, Bi, ec.data(), a.data(), d.data());
      std::fill(s1.begin(), s1.end(), 0.0f);
      std::fill(s2.begin(), s2.end(), 0.0f);
      float* __restrict s1p = s1.data();
      float* __restrict s2p = s2.data();
      const float* __restrict ap = a.data();
      const float* __restrict dp = d.data();
      const float* __restrict ep = ec.data();
      for (int64_t n = 0; n < N; ++n) {
        float* __restrict dzr = dz.data() + n * C;
        const T* __restrict xr = xb + n * C;
        const T* __restrict gr = gb + n * C;
        if (act) {
          for (int64_t c = 0; c < C; ++c) {
            const float z = load(xr, c) * ap[c] + dp[c];
            const float s = sigmoid(z);
            dzr[c] = load(gr, c) * (s * (1.0f + z * (1.0f - s)));
          }
        } else {
          for (int64_t c = 0; c < C; ++c) dzr[c] = load(gr, c);
        }
        for (int64_t c = 0; c < C; ++c) {
          s1p[c] += dzr[c];
          s2p[c] += dzr[c] * (load(xr, c) + ep[c]);
        }
      }
      for (int64_t g = 0; g < G; ++g) {
        const float mu = mean[b * G + g], r = rstd[b * G + g];
        float m1 = 0, m2 = 0;
        for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
          const float dw = r * (s2[c] - mu * s1[c]);  // sum_n dz * xhat
          dW[b * C + c] = dw;
          dB[b * C + c] = s1[c];
          m1 += W[b * C + c] * s1[c];
          m2 += W[b * C + c] * dw;
        }
        m1 /= M;  // mean of dxhat over the group
        m2 /= M;  // mean of dxhat * xhat
        for (int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
          // dx' = rstd * (dxhat - m1 - xhat * m2) = dz * P + x' * Q + R
          P[c] = r * W[b * C + c];
          Q[c] = -r * r * m2;
          R[c] = r * (mu * r * m2 - m1) + ec[c] * Q[c];  // folds x' = x + e
          dec[c] = 0.0f;
        }
      }
      const float* __restrict Pp = P.data();
      const float* __restrict Qp = Q.data();
      const float* __restrict Rp = R.data();
      float* __restrict decp = dec.data();
      for (int64_t n = 0; n < N; ++n) {
        const float* __restrict dzr = dz.data() + n * C;
        const T* __restrict xr = xb + n * C;
        T* __restrict dxr = dxb + n * C;
        for (int64_t c = 0; c < C; ++c) {
          const float v = dzr[c] * Pp[c] + load(xr, c) * Qp[c] + Rp[c];
          decp[c] += v;
          store(dxr, c, v);
        }
      }
      if (de) for (int64_t c = 0; c < C; ++c) de[b * C + c] = dec[c];
    }
  });
}

void check(const torch::Tensor& x, const torch::Tensor& W, const torch::Tensor& Bi, int64_t G) {
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous(), "x must be a contiguous (B, N, C) tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "x must be float32 or bfloat16");
  TORCH_CHECK(G > 0 && x.size(2) % G == 0, "groups must divide the channel count");
  for (const auto* t : {&W, &Bi})
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->size(0) == x.size(0) &&
                t->size(1) == x.size(2), "W and Bias must be contiguous float32 (B, C)");
}

const float* optional_ptr(const torch::Tensor& e) { return e.numel() ? e.data_ptr<float>() : nullptr; }

}  // namespace

std::vector<torch::Tensor> group_norm_act_forward(torch::Tensor x, torch::Tensor e, torch::Tensor W, torch::Tensor Bi,
                                                  int64_t G, double eps, bool act) {
  check(x, W, Bi, G);
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2);
  auto y = torch::empty_like(x);
  auto mean = torch::empty({B, G}, x.options().dtype(at::kFloat));
  auto rstd = torch::empty({B, G}, x.options().dtype(at::kFloat));
  if (x.scalar_type() == at::kFloat)
    forward_kernel<float>(x.data_ptr<float>(), optional_ptr(e), W.data_ptr<float>(), Bi.data_ptr<float>(),
                          y.data_ptr<float>(), mean.data_ptr<float>(), rstd.data_ptr<float>(), B, N, C, G,
                          static_cast<float>(eps), act);
  else
    forward_kernel<uint16_t>(reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()), optional_ptr(e),
                             W.data_ptr<float>(), Bi.data_ptr<float>(),
                             reinterpret_cast<uint16_t*>(y.data_ptr<at::BFloat16>()), mean.data_ptr<float>(),
                             rstd.data_ptr<float>(), B, N, C, G, static_cast<float>(eps), act);
  return {y, mean, rstd};
}

std::vector<torch::Tensor> group_norm_act_backward(torch::Tensor dy, torch::Tensor x, torch::Tensor e, torch::Tensor W,
                                                   torch::Tensor Bi, torch::Tensor mean, torch::Tensor rstd, bool act) {
  check(x, W, Bi, mean.size(1));
  TORCH_CHECK(dy.sizes() == x.sizes() && dy.scalar_type() == x.scalar_type(), "dy must match x");
  dy = dy.contiguous();
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2), G = mean.size(1);
  auto dx = torch::empty_like(x);
  auto fopt = x.options().dtype(at::kFloat);
  auto dW = torch::empty({B, C}, fopt), dB = torch::empty({B, C}, fopt);
  auto de = e.numel() ? torch::empty({B, C}, fopt) : torch::empty({0}, fopt);
  float* de_ptr = e.numel() ? de.data_ptr<float>() : nullptr;
  if (x.scalar_type() == at::kFloat)
    backward_kernel<float>(dy.data_ptr<float>(), x.data_ptr<float>(), optional_ptr(e), W.data_ptr<float>(),
                           Bi.data_ptr<float>(), mean.data_ptr<float>(), rstd.data_ptr<float>(), dx.data_ptr<float>(),
                           de_ptr, dW.data_ptr<float>(), dB.data_ptr<float>(), B, N, C, G, act);
  else
    backward_kernel<uint16_t>(reinterpret_cast<const uint16_t*>(dy.data_ptr<at::BFloat16>()),
                              reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()), optional_ptr(e),
                              W.data_ptr<float>(), Bi.data_ptr<float>(), mean.data_ptr<float>(),
                              rstd.data_ptr<float>(), reinterpret_cast<uint16_t*>(dx.data_ptr<at::BFloat16>()),
                              de_ptr, dW.data_ptr<float>(), dB.data_ptr<float>(), B, N, C, G, act);
  return {dx, de, dW, dB};
}
