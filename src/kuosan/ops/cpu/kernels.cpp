// Python bindings of kuosan's CPU kernels (group_norm_act.cpp, conv_backward.cpp, conv_weight_grad.cpp,
// attention.cpp).
#include <torch/extension.h>
#include <string>
#include <tuple>
#include <vector>

std::vector<torch::Tensor> group_norm_act_forward(torch::Tensor x, torch::Tensor e, torch::Tensor W, torch::Tensor Bi,
                                                  int64_t G, double eps, bool act);
std::vector<torch::Tensor> group_norm_act_backward(torch::Tensor dy, torch::Tensor x, torch::Tensor e, torch::Tensor W,
                                                   torch::Tensor Bi, torch::Tensor mean, torch::Tensor rstd, bool act,
                                                   torch::Tensor skip);
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, std::string> conv2d_backward(
    torch::Tensor dy, torch::Tensor x, torch::Tensor w, std::vector<int64_t> stride, std::vector<int64_t> padding,
    std::vector<int64_t> dilation, int64_t groups, bool need_input, bool need_weight, bool need_bias);
bool amx_weight_grad_available();
bool amx_attention_applies(const torch::Tensor& qkv, int64_t heads);
std::tuple<torch::Tensor, torch::Tensor> amx_attention_forward(const torch::Tensor& qkv, int64_t heads, double scale);
torch::Tensor amx_attention_backward(const torch::Tensor& dout, const torch::Tensor& qkv, const torch::Tensor& P,
                                     int64_t heads, double scale);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("group_norm_act_forward", &group_norm_act_forward,
        "fused GroupNorm (+ additive input, per-sample affine, SiLU) forward: y, mean, rstd");
  m.def("group_norm_act_backward", &group_norm_act_backward,
        "its backward: dx (plus skip, x's gradient from elsewhere, if not empty), de, dW, dB (per sample)");
  // without the GIL: other Python threads (data loading) run meanwhile
  m.def("conv2d_backward", &conv2d_backward,
        "2-D convolution backward: dx, dW, dbias, route of dW (amx, swap, split, onednn, none)",
        py::call_guard<py::gil_scoped_release>());
  m.def("amx_weight_grad_available", &amx_weight_grad_available, "whether the AMX weight-gradient route is built and usable");
  m.def("amx_attention_applies", &amx_attention_applies, "whether the AMX self-attention kernel takes this qkv");
  m.def("amx_attention_forward", &amx_attention_forward, "self-attention on AMX from the qkv projection: out, P",
        py::call_guard<py::gil_scoped_release>());
  m.def("amx_attention_backward", &amx_attention_backward, "its backward: d(qkv)",
        py::call_guard<py::gil_scoped_release>());
}
