// Backward of a 2-D convolution with a faster weight gradient for U-Net shapes on a few CPU cores;
// returns dx, dW, dbias (in the dtypes of x and w) and which route computed dW
// (built with the other kernels by kuosan/networks/fused.py).
//
//   dW[o, c, i, j] = sum_{b, p, q} dy[b, o, p, q] * xpad[b, c, p s + i, q s + j]
//   dbias[o]       = sum_{b, p, q} dy[b, o, p, q]
//
// oneDNN's weight-gradient kernel (torch 2.13, bfloat16, AMX) is 2-5x slower than the forward
// convolution of the same size at U-Net shapes: its reduction over the batch and pixels scales
// poorly across threads, and with few pixels the reduction is short. With stride 1 and at most 16
// output pixels ("swap"), the sum is itself a forward convolution with batch and channels
// exchanged: xpad^T (C, B, H, W) convolved with the filters dy^T (O, B, H', W') gives
// dW^T (C, O, kh, kw). At 4x4 pixels, batch 128, 128 channels: 0.8 ms instead of 2.3 ms.
// Elsewhere, and for the input gradient (no reduction over the batch, scales well), oneDNN's own
// kernel runs, in one call. The rule comes from timing every convolution of the benchmark U-Nets
// (benchmarks/train_speed.py) on 2 cores.
#include <torch/extension.h>
#include <string>
#include <tuple>
#include <vector>

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, std::string> conv2d_backward(
    torch::Tensor dy, torch::Tensor x, torch::Tensor w, std::vector<int64_t> stride, std::vector<int64_t> padding,
    std::vector<int64_t> dilation, int64_t groups, bool need_input, bool need_weight, bool need_bias) {
  const auto cl = at::MemoryFormat::ChannelsLast;
  torch::Tensor dx, dw, db;
  const int64_t batch = x.size(0), kh = w.size(2), kw = w.size(3);
  const bool unit = stride[0] == 1 && stride[1] == 1 && dilation[0] == 1 && dilation[1] == 1 && groups == 1;
  const bool swap = unit && batch > 0 && kh * kw > 1 && dy.size(2) * dy.size(3) <= 16;
  std::vector<int64_t> bias_sizes{w.size(0)};
  auto conv_backward = [&](bool in, bool wt, bool bi) {
    return at::convolution_backward(dy, x, w, bi ? at::OptionalIntArrayRef(bias_sizes) : at::OptionalIntArrayRef(),
                                    stride, padding, dilation, false, {0, 0}, groups, {in, wt, bi});
  };
  if (!(need_weight || need_bias) || !swap) {  // oneDNN for all (one call shares its reorders)
    auto r = conv_backward(need_input, need_weight, need_bias);
    if (need_input) dx = std::get<0>(r);
    if (need_weight) dw = std::get<1>(r);
    if (need_bias) db = std::get<2>(r);
    return {dx, dw, db, need_weight || need_bias ? "onednn" : "none"};
  }
  if (need_input) dx = std::get<0>(conv_backward(true, false, false));
  if (need_weight) {
    auto xt = x.transpose(0, 1).contiguous(cl);   // (C, B, H, W): channels as the batch
    auto dyt = dy.transpose(0, 1).contiguous(cl);  // (O, B, H', W'): the filters
    dw = at::conv2d(xt, dyt, {}, 1, padding).transpose(0, 1);  // (O, C, kh, kw)
  }
  if (need_bias) db = dy.sum({0, 2, 3}, false, at::kFloat).to(w.scalar_type());
  return {dx, dw, db, "swap"};
}
