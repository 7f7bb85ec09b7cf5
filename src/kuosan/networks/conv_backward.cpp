// Backward of a 2-D convolution with a faster weight gradient for U-Net shapes on a few CPU cores;
// returns dx, dW, dbias (in the dtypes of x and w) and which route computed dW
// (built with the other kernels by kuosan/networks/fused.py).
//
//   dW[o, c, i, j] = sum_{b, p, q} dy[b, o, p, q] * xpad[b, c, p s + i, q s + j]
//   dbias[o]       = sum_{b, p, q} dy[b, o, p, q]
//
// oneDNN's weight-gradient kernel (torch 2.13, bfloat16, AMX) is 2-5x slower than the forward
// convolution of the same size at U-Net shapes: its reduction over the batch and pixels scales
// poorly across threads, and with few pixels the reduction is short. Two rewrites of the same sum:
//
// * "swap" (stride 1, kernel > 1, at most 16 output pixels): the sum is itself a forward
//   convolution with batch and channels exchanged: xpad^T (C, B, H, W) convolved with the filters
//   dy^T (O, B, H', W') gives dW^T (C, O, kh, kw). At 4x4 pixels, batch 128, 128 channels: 0.8 ms
//   instead of 2.3 ms.
// * "split" (1x1 kernels, or at least 32 samples per thread, or at most 64 input channels): each
//   thread runs the single-threaded kernel on its own slice of the batch and the slices' results
//   are added in float32 (then rounded to w's dtype). (128, 64, 8, 8) -> 64: 0.9 ms instead of 1.3 ms; 1x1 kernels about 2x.
//
// Elsewhere oneDNN's own kernel runs. The input gradient (no reduction over the batch, scales
// well) is oneDNN's on all threads. The rules come from timing every convolution of the benchmark
// U-Nets (benchmarks/train_speed.py) on 2 cores; all three compute the same sum, to rounding.
#include <torch/extension.h>
#include <omp.h>
#include <exception>
#include <string>
#include <tuple>
#include <vector>

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, std::string> conv2d_backward(
    torch::Tensor dy, torch::Tensor x, torch::Tensor w, std::vector<int64_t> stride, std::vector<int64_t> padding,
    std::vector<int64_t> dilation, int64_t groups, bool need_input, bool need_weight, bool need_bias) {
  // one memory format for all three: with a channels-last x and an NCHW dy, oneDNN's weight
  // gradient run inside the parallel region below waited forever for a second thread (torch 2.13)
  const auto cl = at::MemoryFormat::ChannelsLast;
  dy = dy.contiguous(cl);
  x = x.contiguous(cl);
  w = w.contiguous(cl);
  auto conv_backward = [&](const torch::Tensor& dy_, const torch::Tensor& x_, bool in, bool wt, bool bi) {
    std::vector<int64_t> bias_sizes{w.size(0)};
    return at::convolution_backward(dy_, x_, w, bi ? at::OptionalIntArrayRef(bias_sizes) : at::OptionalIntArrayRef(),
                                    stride, padding, dilation, false, {0, 0}, groups, {in, wt, bi});
  };
  torch::Tensor dx, dw, db;
  const int64_t batch = x.size(0), in_channels = x.size(1), kh = w.size(2), kw = w.size(3);
  const bool unit = stride[0] == 1 && stride[1] == 1 && dilation[0] == 1 && dilation[1] == 1 && groups == 1;
  const bool swap = unit && batch > 0 && kh * kw > 1 && dy.size(2) * dy.size(3) <= 16;
  const int nt = static_cast<int>(std::min<int64_t>(omp_get_max_threads(), batch));
  const bool split = !swap && nt > 1 && !omp_in_parallel() && (kh * kw == 1 || batch / nt >= 32 || in_channels <= 64);
  if (!(need_weight || need_bias) || !(swap || split)) {  // oneDNN for all (one call shares its reorders)
    auto r = conv_backward(dy, x, need_input, need_weight, need_bias);
    if (need_input) dx = std::get<0>(r);
    if (need_weight) dw = std::get<1>(r);
    if (need_bias) db = std::get<2>(r);
    return {dx, dw, db, need_weight || need_bias ? "onednn" : "none"};
  }
  if (need_input) dx = std::get<0>(conv_backward(dy, x, true, false, false));
  if (swap) {
    if (need_weight) {
      auto xt = x.transpose(0, 1).contiguous(cl);   // (C, B, H, W): channels as the batch
      auto dyt = dy.transpose(0, 1).contiguous(cl);  // (O, B, H', W'): the filters
      dw = at::conv2d(xt, dyt, {}, 1, padding).transpose(0, 1);  // (O, C, kh, kw)
    }
    if (need_bias) db = dy.sum({0, 2, 3}, false, at::kFloat).to(w.scalar_type());
    return {dx, dw, db, "swap"};
  }
  std::vector<torch::Tensor> dws(nt), dbs(nt);
  std::exception_ptr error;
  const at::ThreadLocalState state;  // grad mode, dispatch keys... of the caller, for every thread
#pragma omp parallel num_threads(nt)
  {
    // one thread per slice: oneDNN then builds single-threaded primitives for it (a primitive made
    // for more threads than run it would wait at its internal barrier forever)
    omp_set_num_threads(1);
    const int t = omp_get_thread_num();
    try {
      at::ThreadLocalStateGuard guard(state);
      const int64_t lo = batch * t / nt, hi = batch * (t + 1) / nt;
      auto r = conv_backward(dy.slice(0, lo, hi), x.slice(0, lo, hi), false, need_weight, need_bias);
      dws[t] = std::get<1>(r);
      dbs[t] = std::get<2>(r);
    } catch (...) {
#pragma omp critical
      error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
  auto sum = [&](std::vector<torch::Tensor>& parts) {
    auto total = parts[0].to(at::kFloat, /*non_blocking=*/false, /*copy=*/true);
    for (int t = 1; t < nt; ++t) total.add_(parts[t]);
    return total.to(w.scalar_type());
  };
  if (need_weight) dw = sum(dws);
  if (need_bias) db = sum(dbs);
  return {dx, dw, db, "split"};
}
