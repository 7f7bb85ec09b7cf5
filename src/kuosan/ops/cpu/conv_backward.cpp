// Backward of a 2-D convolution with a faster weight gradient for U-Net shapes on a few CPU cores;
// returns dx, dW, dbias (in the dtypes of x and w) and which route computed dW
// (built with the other kernels by kuosan/ops/cpu/__init__.py).
//
//   dW[o, c, i, j] = sum_{b, p, q} dy[b, o, p, q] * xpad[b, c, p s + i, q s + j]
//   dbias[o]       = sum_{b, p, q} dy[b, o, p, q]
//
// oneDNN's weight-gradient kernel (torch 2.13, bfloat16, AMX) is 2-5x slower than the forward
// convolution of the same size at U-Net shapes: its reduction over the batch and pixels scales
// poorly across threads, and with few pixels the reduction is short. Three rewrites of the same sum:
//
// * "amx" (bfloat16, 3x3 with padding 1 or 1x1, stride 1, channels multiples of 32, a CPU with
//   AMX): kuosan's own tile kernel, nine (or one) matrix products over the flattened pixels
//   (conv_weight_grad.cpp). At
//   (128, 128, 8, 8) -> 128: 1.4 ms instead of 3.0 ms.
// * "swap" (stride 1, kernel > 1, at most 16 output pixels): the sum is itself a forward
//   convolution with batch and channels exchanged: xpad^T (C, B, H, W) convolved with the filters
//   dy^T (O, B, H', W') gives dW^T (C, O, kh, kw). At 4x4 pixels, batch 128, 128 channels: 0.8 ms
//   instead of 2.3 ms.
// * "split" (two threads, no groups or dilation; 1x1 kernels, at least 32 samples per half, or at
//   most 64 input channels): each thread of a two-thread OpenMP region runs oneDNN's
//   single-threaded kernel on its half of the batch (a smaller team, under OMP_DYNAMIC or a thread limit, runs both in
//   turn), and the halves are added in float32. Each half comes back in w's dtype, so in bfloat16
//   the sum is rounded twice: about 1.5x one call's rounding error (1.7e-3 against 1.1e-3 of the
//   gradient's RMS). (128, 64, 8, 8) -> 64: 0.9 ms instead of 1.3 ms; 1x1 kernels about 2x. Each
//   half is oneDNN's single-threaded result (bitwise repeatable) and the addition has one order,
//   so the result is the same every run (tests/ops/test_cpu_kernels.py checks it from a fresh process).
//
// Elsewhere, and for the input gradient (no reduction over the batch, scales well), oneDNN's own
// kernel runs. The rules come from timing every convolution of the benchmark U-Nets
// (benchmarks/train_speed.py) on 2 cores.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <omp.h>
#include <exception>
#include <string>
#include <tuple>
#include <vector>

bool amx_weight_grad_applies(const at::Tensor& x, const at::Tensor& dy, const at::Tensor& w,
                             const std::vector<int64_t>& stride, const std::vector<int64_t>& padding);
std::tuple<at::Tensor, at::Tensor> amx_weight_grad(const at::Tensor& dy, const at::Tensor& x,
                                                         const at::Tensor& w, bool need_bias);

std::tuple<at::Tensor, at::Tensor, at::Tensor, std::string> conv2d_backward(
    at::Tensor dy, at::Tensor x, at::Tensor w, std::vector<int64_t> stride, std::vector<int64_t> padding,
    std::vector<int64_t> dilation, int64_t groups, bool need_input, bool need_weight, bool need_bias) {
  const auto cl = at::MemoryFormat::ChannelsLast;
  // the routes below index dy through x's and w's sizes: shapes that disagree are an error here, not
  // a read past dy's end
  TORCH_CHECK(x.dim() == 4 && w.dim() == 4 && dy.dim() == 4, "conv2d_backward: x, w and dy must be 4-D");
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2 && groups >= 1,
              "conv2d_backward: stride, padding and dilation need two entries each, groups at least 1");
  TORCH_CHECK(x.size(1) == w.size(1) * groups && w.size(0) % groups == 0,
              "conv2d_backward: x has ", x.size(1), " channels, w expects ", w.size(1) * groups);
  for (int d = 0; d < 2; ++d) {
    const int64_t out = (x.size(2 + d) + 2 * padding[d] - dilation[d] * (w.size(2 + d) - 1) - 1) / stride[d] + 1;
    TORCH_CHECK(dy.size(2 + d) == out, "conv2d_backward: dy has size ", dy.size(2 + d), " in dimension ", 2 + d,
                ", the convolution gives ", out);
  }
  TORCH_CHECK(dy.size(0) == x.size(0) && dy.size(1) == w.size(0), "conv2d_backward: dy is ", dy.sizes(),
              ", expected batch ", x.size(0), " and ", w.size(0), " channels");
  at::Tensor dx, dw, db;
  // dy in x's channels-last layout: the gradient of a concatenation arrives as a channel slice of a
  // wider tensor, which oneDNN reorders slowly (dx and dW of (32, 128, 32, 32) -> 128: 15 ms
  // against 10 ms with this copy of 0.4 ms) and the rewrites below need dense
  if (x.is_contiguous(cl) && !dy.is_contiguous(cl)) dy = dy.contiguous(cl);
  const int64_t batch = x.size(0), in_channels = x.size(1), kh = w.size(2), kw = w.size(3);
  // the rewrites only for ungrouped, undilated convolutions (the shapes they were timed on)
  const bool plain = dilation[0] == 1 && dilation[1] == 1 && groups == 1;
  const bool amx = plain && need_weight && amx_weight_grad_applies(x, dy, w, stride, padding);
  const bool swap = !amx && plain && stride[0] == 1 && stride[1] == 1 && batch > 0 && kh * kw > 1 &&
                    dy.size(2) * dy.size(3) <= 16;
  // (with inputs in one memory format: mixed ones once made oneDNN wait forever in the region)
  const bool split = plain && !amx && !swap && batch >= 2 && omp_get_max_threads() == 2 && !omp_in_parallel() &&
                     (kh * kw == 1 || batch / 2 >= 32 || in_channels <= 64) && x.is_contiguous(cl) &&
                     dy.is_contiguous(cl) && w.is_contiguous(cl);
  std::vector<int64_t> bias_sizes{w.size(0)};
  auto conv_backward = [&](const at::Tensor& dy_, const at::Tensor& x_, bool in, bool wt, bool bi) {
    return at::convolution_backward(dy_, x_, w, bi ? at::OptionalIntArrayRef(bias_sizes) : at::OptionalIntArrayRef(),
                                    stride, padding, dilation, false, {0, 0}, groups, {in, wt, bi});
  };
  if (!(need_weight || need_bias) || !(amx || swap || split)) {  // oneDNN for all (one call shares its reorders)
    auto r = conv_backward(dy, x, need_input, need_weight, need_bias);
    if (need_input) dx = std::get<0>(r);
    if (need_weight) dw = std::get<1>(r);
    if (need_bias) db = std::get<2>(r);
    return {dx, dw, db, need_weight || need_bias ? "onednn" : "none"};
  }
  if (need_input) dx = std::get<0>(conv_backward(dy, x, true, false, false));
  if (amx) {
    std::tie(dw, db) = amx_weight_grad(dy, x, w, need_bias);
    return {dx, dw, db, "amx"};
  }
  if (swap) {
    if (need_weight) {
      auto xt = x.transpose(0, 1).contiguous(cl);   // (C, B, H, W): channels as the batch
      auto dyt = dy.transpose(0, 1).contiguous(cl);  // (O, B, H', W'): the filters
      // (O, C, kh, kw) in w's layout: the parameter's gradient then needs no layout copy of its own
      dw = at::conv2d(xt, dyt, {}, 1, padding).transpose(0, 1).contiguous(w.suggest_memory_format());
    }
    // over the (B H W, O) rows of a channels-last dy: a float32-accumulated sum, no float32 copy
    if (need_bias) db = (dy.is_contiguous(cl) ? dy.permute({0, 2, 3, 1}).reshape({-1, dy.size(1)}).sum(0)
                                              : dy.sum({0, 2, 3}, false, at::kFloat)).to(w.scalar_type());
    return {dx, dw, db, "swap"};
  }
  const int64_t half = batch / 2;
  std::tuple<at::Tensor, at::Tensor, at::Tensor> parts[2];
  std::exception_ptr error;
  const at::ThreadLocalState state;  // the caller's grad mode, dispatch keys...
#pragma omp parallel num_threads(2)
  {
    // ATen sets a thread's OpenMP thread count to torch's on the thread's first parallel call; done
    // later, inside the call below, it made that one call build a two-thread oneDNN primitive (a
    // different summation order, once per pool thread: results then differed between runs)
    at::get_num_threads();  // runs that first-call setup now (libtorch's own, not an inlined copy)
    omp_set_num_threads(1);  // this thread's setting inside the region: single-threaded primitives
    try {
      at::ThreadLocalStateGuard guard(state);
      // half h on thread h; a smaller team (OMP_DYNAMIC, a thread limit) runs both halves in turn
      for (int h = omp_get_thread_num(); h < 2; h += omp_get_num_threads())
        parts[h] = conv_backward(dy.slice(0, h ? half : 0, h ? batch : half), x.slice(0, h ? half : 0, h ? batch : half),
                                 false, need_weight, need_bias);
    } catch (...) {
#pragma omp critical
      error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
  auto add = [&](const at::Tensor& a, const at::Tensor& b) {
    return a.to(at::kFloat, false, true).add_(b).to(w.scalar_type());
  };
  if (need_weight) dw = add(std::get<1>(parts[0]), std::get<1>(parts[1]));
  if (need_bias) db = add(std::get<2>(parts[0]), std::get<2>(parts[1]));
  return {dx, dw, db, "split"};
}
