"""The CPU kernels of kuosan.ops: the GroupNorm kernel against the same function in float64 PyTorch operations, the
convolution backward against the definition, and the U-Net with and without them."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kuosan import ops
from kuosan.networks import UNet
from kuosan.ops import conv_backward_applies, cpu, kernels_available
from kuosan.ops.cpu import autograd
from kuosan.ops.cpu.autograd import group_norm_applies as fusable

pytestmark = pytest.mark.skipif(not kernels_available(), reason="the CPU kernels cannot be built here")


def group_norm_act(x, groups, weight, bias, eps=1e-6, **kwargs):
    """ops.group_norm_act with a norm of these parameters (anything with the nn.GroupNorm attributes)."""
    return ops.group_norm_act(x, SimpleNamespace(num_groups=groups, weight=weight, bias=bias, eps=eps), **kwargs)


class Conv2d(nn.Conv2d):
    """An nn.Conv2d called through ops.conv2d, as the networks call theirs."""

    def forward(self, x, residual=None):
        return ops.conv2d(x, self, residual)


def reference(x, groups, weight, bias, e, scale, shift, act):
    """float64 GN(x + e) (1 + scale) + shift, then SiLU, by the definition (Wu & He 2018, Eq. 1-2)."""
    b, c, h, w = x.shape
    if e is not None:
        x = x + e[:, :, None, None]
    xg = x.reshape(b, groups, -1)
    mu, var = xg.mean(-1, keepdim=True), xg.var(-1, unbiased=False, keepdim=True)
    z = ((xg - mu) / torch.sqrt(var + 1e-6)).reshape(b, c, h, w) * weight[:, None, None] + bias[:, None, None]
    if scale is not None:
        z = z * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
    return z * torch.sigmoid(z) if act else z


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("variant", ["plain", "add", "scale_shift"])
@pytest.mark.parametrize("act", [True, False])
def test_forward_and_gradients_match_definition(dtype, tol, variant, act):
    torch.manual_seed(0)
    b, c, h, w, groups = 3, 40, 5, 7, 10  # odd sizes: 40 channels end in a partial 16-lane vector
    # a large mean and varied scales: a one-pass variance in float32 would lose digits here
    x = (torch.randn(b, c, h, w) * torch.rand(1, c, 1, 1) * 3 + 20).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    assert fusable(x)
    weight, bias = torch.randn(c, requires_grad=True), torch.randn(c, requires_grad=True)
    extra = {}
    if variant == "add":
        extra["e"] = torch.randn(b, c, requires_grad=True)
    if variant == "scale_shift":
        extra["scale"], extra["shift"] = torch.randn(b, c, requires_grad=True), torch.randn(b, c, requires_grad=True)
    y = group_norm_act(
        x, groups, weight, bias, e=extra.get("e"), scale=extra.get("scale"), shift=extra.get("shift"), act=act
    )
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    inputs = [x, weight, bias, *extra.values()]
    g = torch.randn(y.shape)
    grads = torch.autograd.grad(y, inputs, g.to(dtype))

    ref_in = [t.detach().double().requires_grad_() for t in inputs]
    named = dict(zip(["x", "weight", "bias", *extra], ref_in))
    y_ref = reference(
        named["x"], groups, named["weight"], named["bias"], named.get("e"), named.get("scale"), named.get("shift"), act
    )
    ref_grads = torch.autograd.grad(y_ref, ref_in, g.double())

    def rel(a, r):
        return ((a.double() - r).abs().max() / r.abs().max()).item()

    assert rel(y, y_ref) < tol
    for name, a, r in zip(named, grads, ref_grads):
        assert rel(a, r) < (tol if name == "x" or dtype == torch.float32 else 2e-2), name


def test_bf16_silu_is_rounding_accurate_per_element():
    """The bf16 path's SiLU must give every output within bf16's rounding of the exact value (half
    a unit in the 8th bit: 2^-8 relative at most, 5% slack for the float32 statistics): z = w *
    standardized x over about [-30, 30] (one channel per group, no bias: z has no cancellation),
    each element against float64 SiLU of the same z."""
    torch.manual_seed(0)
    b, c, h, w = 2, 32, 32, 32
    x = torch.randn(b, c, h, w).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.linspace(0.5, 8.0, c), torch.zeros(c)
    y = group_norm_act(x, c, weight, bias, act=True)
    z = reference(x.double(), c, weight.double(), bias.double(), None, None, None, act=False)
    assert z.min() < -25 and z.max() > 25
    exact = z * torch.sigmoid(z)
    err = (y.double() - exact).abs()
    assert (err <= exact.abs() * 2.0**-8 * 1.05 + 1e-6).all(), (err / exact.abs()).max().item()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("used", ["both", "norm", "residual"])
def test_passthrough_adds_the_residual_gradient(dtype, tol, used):
    """``passthrough=True`` returns x again for a residual path; x's gradient is the sum of both
    paths' (added inside the backward kernel), whichever of them reaches the loss."""
    torch.manual_seed(0)
    x = torch.randn(2, 48, 5, 6).to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight, bias = torch.randn(48), torch.randn(48)
    y, skip = group_norm_act(x, 8, weight, bias, act=True, passthrough=True)
    assert torch.equal(skip, x)
    gy, gs = (torch.randn(x.shape).contiguous(memory_format=torch.channels_last) for _ in range(2))
    x64 = x.detach().double().requires_grad_()
    y64 = reference(x64, 8, weight.double(), bias.double(), None, None, None, True)
    paths = {"both": ((y, gy), (skip, gs)), "norm": ((y, gy),), "residual": ((skip, gs),)}[used]
    paths64 = {"both": ((y64, gy), (x64, gs)), "norm": ((y64, gy),), "residual": ((x64, gs),)}[used]
    (dx,) = torch.autograd.grad(sum((t.float() * g).sum() for t, g in paths), x)
    (dx64,) = torch.autograd.grad(sum((t * g.double()).sum() for t, g in paths64), x64)
    assert dx.dtype == dtype
    assert ((dx.double() - dx64).abs().max() / dx64.abs().max()).item() < tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_results_do_not_depend_on_buffer_alignment(dtype):
    """Bitwise the same output and gradients for the same values stored at another address (exact
    resume needs it: a vector loop with a scalar prologue chosen by alignment would break it)."""
    torch.manual_seed(0)
    x = torch.randn(4, 40, 6, 6).to(dtype).contiguous(memory_format=torch.channels_last)
    weight, bias, e = torch.randn(40), torch.randn(40), torch.randn(4, 40)
    g = torch.randn(x.shape).to(dtype).contiguous(memory_format=torch.channels_last)
    results, alignments = [], set()
    for offset in (0, 1, 3, 8):
        flat = torch.empty(x.numel() + offset, dtype=dtype)
        moved = flat[offset:].as_strided(x.shape, x.stride()).copy_(x).requires_grad_()
        assert fusable(moved)
        alignments.add(moved.data_ptr() % 64)
        y = group_norm_act(moved, 10, weight, bias, e=e, act=True)
        results.append((y.detach(), torch.autograd.grad(y, moved, g)[0]))
    assert len(alignments) > 1  # the offsets did move the data across 64-byte boundaries
    for y, dx in results[1:]:
        assert torch.equal(y, results[0][0]) and torch.equal(dx, results[0][1])


def test_unet_fused_equals_unfused_path():
    """The same U-Net on a channels-last input (fused kernel) and on an NCHW one (PyTorch ops):
    equal outputs and parameter gradients, with FiLM and with additive time conditioning."""
    for scale_shift in (True, False):
        torch.manual_seed(0)
        net = UNet(
            in_channels=3,
            base_channels=32,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attention_levels=(1,),
            num_heads=2,
            scale_shift=scale_shift,
        )
        for p in net.parameters():  # zero-initialised output layers would hide most of the network
            torch.nn.init.normal_(p, std=0.05)
        x, t = torch.randn(2, 3, 8, 8), torch.tensor([3.0, 700.0])
        outs, grads = [], []
        for fmt in (torch.contiguous_format, torch.channels_last):
            net.zero_grad()
            y = net.to(memory_format=fmt)(x.contiguous(memory_format=fmt), t)
            (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
            outs.append(y.detach())
            grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)


def test_kernel_rejects_groups_not_dividing_channels():
    x = torch.randn(1, 6, 2, 2).contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="groups must divide"):
        group_norm_act(x, 4, torch.ones(6), torch.zeros(6))


def test_non_fusable_inputs_take_pytorch_path():
    x = torch.randn(2, 8, 4, 4)  # NCHW
    assert not fusable(x)
    y = group_norm_act(x, 4, torch.ones(8), torch.zeros(8), act=True)
    torch.testing.assert_close(y, F.silu(F.group_norm(x, 4, eps=1e-6)))


@pytest.mark.parametrize("n,m,heads,d", [(16, 16, 4, 32), (256, 256, 1, 128), (64, 7, 2, 64), (300, 300, 1, 64)])
def test_reduced_precision_attention_matches_float64(n, m, heads, d):
    """Both CPU bfloat16 routes of ``attend`` (bf16 products with a float32 softmax; float32 flash
    kernel), with a key mask, against the float64 definition softmax(q k^T / sqrt(d)) v."""
    from kuosan.networks.attention import attend

    torch.manual_seed(0)
    q, k, v = torch.randn(2, heads, n, d), torch.randn(2, heads, m, d), torch.randn(2, heads, m, d)
    mask = torch.rand(2, 1, 1, m) > 0.3
    mask[..., 0] = True  # every query keeps at least one key
    out = attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask)
    assert out.dtype == torch.bfloat16
    logits = (q.double() @ k.double().transpose(-1, -2)) / d**0.5
    ref = logits.masked_fill(~mask, float("-inf")).softmax(-1) @ v.double()
    assert (out.double() - ref).abs().max() < 0.05 * ref.abs().max()


def test_unbuildable_kernel_warns_once_and_falls_back(monkeypatch):
    """No compiler (or no ninja): one warning, then the PyTorch-operations path gives the result
    and convolutions train with nn.Conv2d's own backward."""
    import torch.utils.cpp_extension as cpp

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Ninja is required to load C++ extensions")

    monkeypatch.setattr(cpu, "_EXT", None)
    monkeypatch.setattr(cpu, "_FAILED", False)
    monkeypatch.setattr(cpp, "load", no_compiler)
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    with pytest.warns(UserWarning, match="CPU kernels unavailable.*Ninja is required"):
        assert not kernels_available()
    assert not fusable(x)
    y = group_norm_act(x, 4, torch.ones(8), torch.zeros(8), act=True)
    torch.testing.assert_close(y, F.silu(F.group_norm(x, 4, eps=1e-6)))
    conv = Conv2d(8, 4, 3, padding=1).to(memory_format=torch.channels_last)
    assert not conv_backward_applies(x.requires_grad_(), conv)
    conv(x).sum().backward()  # nn.Conv2d's own backward
    assert conv.weight.grad is not None and x.grad is not None


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    "batch,c_in,c_out,k,stride,padding,bias,size,route",
    [
        (3, 5, 7, 3, 1, 1, True, (9, 7), "split"),  # > 16 output pixels; uneven halves
        (4, 16, 8, 3, 2, 1, True, (9, 7), "split"),  # strided
        (2, 6, 4, 1, 1, 0, False, (3, 3), "split"),  # 1x1 kernel
        (6, 12, 10, 3, 1, 1, True, (4, 3), "swap"),  # batch and channels exchanged
        (3, 8, 8, 3, 1, 1, False, (2, 2), "swap"),
        (1, 8, 8, 3, 1, 1, True, (3, 3), "swap"),  # a single sample
        (4, 72, 8, 3, 1, 1, True, (9, 7), "onednn"),  # > 64 channels, < 32 samples a half
        (1, 5, 7, 3, 1, 1, True, (9, 7), "onednn"),
    ],
)  # one sample: nothing to split
@pytest.mark.parametrize("autocast", [False, True])
def test_conv_backward_matches_definition(
    two_threads, batch, c_in, c_out, k, stride, padding, bias, size, route, autocast
):
    """Conv2d's backward (weight gradient by batch-and-channel exchange, by halves of the batch on two
    threads, or oneDNN's) against
    float64 convolution gradients; float32 to 1e-5,
    bfloat16 autocast to its rounding, with the gradients in the parameters' float32."""
    torch.manual_seed(0)
    conv = Conv2d(c_in, c_out, k, stride=stride, padding=padding, bias=bias).to(memory_format=torch.channels_last)
    x = torch.randn(batch, c_in, *size).contiguous(memory_format=torch.channels_last).requires_grad_()
    assert conv_backward_applies(x, conv)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = conv(x)
    assert y.dtype == (torch.bfloat16 if autocast else torch.float32)
    g = torch.randn(y.shape).contiguous(memory_format=torch.channels_last)  # as the network's gradients
    y.backward(g.to(y.dtype))
    ref = torch.nn.Conv2d(c_in, c_out, k, stride=stride, padding=padding, bias=bias).double()
    ref.load_state_dict(conv.state_dict())
    x_ref = x.detach().double().requires_grad_()
    y_ref = ref(x_ref)
    y_ref.backward(g.double())
    tol = 1e-2 if autocast else 1e-5

    def rel(a, r):
        return ((a.double() - r).abs().max() / r.abs().max()).item()

    assert rel(y, y_ref) < tol
    assert x.grad.dtype == torch.float32 and rel(x.grad, x_ref.grad) < tol
    assert conv.weight.grad.dtype == torch.float32 and rel(conv.weight.grad, ref.weight.grad) < tol
    if bias:
        assert rel(conv.bias.grad, ref.bias.grad) < tol
    w = conv.weight.detach().contiguous(memory_format=torch.channels_last)

    def backward(dy):
        args = (list(conv.stride), list(conv.padding), list(conv.dilation), 1, True, True, bias)
        return cpu.extension().conv2d_backward(dy.to(y.dtype), x.detach().to(y.dtype), w.to(y.dtype), *args)

    assert backward(g)[3] == route
    # dy in another layout (NCHW, or a channel slice as a concatenation's gradient gives) is made
    # channels-last first: the same route and values
    wide = torch.cat([g, g], 1).contiguous(memory_format=torch.channels_last)[:, :c_out]
    for dy in (g.contiguous(), wide):
        other = backward(dy)
        assert other[3] == route and rel(other[1], ref.weight.grad) < tol and rel(other[0], x_ref.grad) < tol


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("layout", ["fused", "nchw"])
def test_conv_with_residual(two_threads, autocast, layout):
    """``conv(x, residual=r)`` is ``conv(x) + r``: the addition inside oneDNN's convolution where
    r is channels-last in the convolution's dtype, a separate addition otherwise; the residual's
    gradient is the output's."""
    torch.manual_seed(0)
    cl = torch.channels_last
    conv = Conv2d(32, 32, 3, padding=1).to(memory_format=cl)
    ref = torch.nn.Conv2d(32, 32, 3, padding=1).double()
    ref.load_state_dict(conv.state_dict())
    dtype = torch.bfloat16 if autocast else torch.float32
    x = torch.randn(4, 32, 6, 5).contiguous(memory_format=cl)
    r = torch.randn(4, 32, 6, 5).to(dtype)
    r = (r.contiguous(memory_format=cl) if layout == "fused" else r.contiguous()).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = conv(x.requires_grad_(), residual=r)
    assert y.dtype == dtype
    g = torch.randn(y.shape).to(dtype)
    y.backward(g)
    x64, r64 = x.detach().double().requires_grad_(), r.detach().double().requires_grad_()
    y64 = ref(x64) + r64
    y64.backward(g.double())
    tol = 1e-2 if autocast else 1e-5
    for a, b in (
        (y, y64),
        (x.grad, x64.grad),
        (r.grad, r64.grad),
        (conv.weight.grad, ref.weight.grad),
        (conv.bias.grad, ref.bias.grad),
    ):
        assert ((a.double() - b).abs().max() / b.abs().max()).item() < tol
    assert torch.equal(r.grad, g)  # the output's gradient, passed on


def test_conv_backward_only_where_it_applies():
    """The custom backward serves training on channels-last CPU tensors; inference, NCHW inputs and
    an empty batch take nn.Conv2d's own path (same result)."""
    conv = Conv2d(4, 4, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(2, 4, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    assert conv_backward_applies(x, conv)
    assert not conv_backward_applies(x.contiguous(), conv)
    assert not conv_backward_applies(x[:0], conv)
    conv(x[:0]).sum().backward()
    with torch.no_grad():
        assert not conv_backward_applies(x, conv)
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))


def test_conv_backward_is_differentiable(two_threads):
    """A gradient through the gradient (create_graph=True, as sliced score matching takes) equals
    nn.Conv2d's, for the input and the weight."""
    torch.manual_seed(0)
    conv = Conv2d(6, 6, 3, padding=1).to(memory_format=torch.channels_last)
    ref = torch.nn.Conv2d(6, 6, 3, padding=1).double()
    ref.load_state_dict(conv.state_dict())
    x = torch.randn(4, 6, 4, 4).contiguous(memory_format=torch.channels_last)
    results = []
    for net, xin in ((conv, x), (ref, x.double())):
        xin = xin.detach().requires_grad_()
        (g,) = torch.autograd.grad(net(xin).tanh().sum(), xin, create_graph=True)
        results.append(torch.autograd.grad(g.square().sum(), [xin, net.weight]))
    for a, r in zip(*results):
        torch.testing.assert_close(a.double(), r, rtol=1e-4, atol=1e-6)


def test_conv_backward_input_without_gradient(two_threads):
    """A first layer (input without gradient) gets weight gradients only."""
    torch.manual_seed(0)
    conv = Conv2d(3, 4, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 6, 6).contiguous(memory_format=torch.channels_last)
    conv(x).square().sum().backward()
    ref = torch.nn.Conv2d(3, 4, 3, padding=1)
    ref.load_state_dict(conv.state_dict())
    ref(x.contiguous()).square().sum().backward()
    torch.testing.assert_close(conv.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(conv.bias.grad, ref.bias.grad, rtol=1e-5, atol=1e-5)


def run_script(code: str) -> None:
    """Run ``code`` in a fresh Python process (fresh threads; a hang fails the test after 300 s
    instead of stalling the suite) and require that it ends by printing "ok"."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-2000:]


def test_conv_backward_under_a_python_dispatch_mode():
    """Under FlopCounterMode (a Python dispatch mode) the backward runs PyTorch's own kernel and
    counts as nn.Conv2d does. Run in a subprocess so a hang (a kernel entering the mode without
    the interpreter lock) fails the test instead of stalling the suite."""
    code = """
import torch
from torch.utils.flop_counter import FlopCounterMode
from kuosan import ops
class Conv2d(torch.nn.Conv2d):
    def forward(self, x):
        return ops.conv2d(x, self)
torch.set_num_threads(2)
conv = Conv2d(64, 64, 3, padding=1).to(memory_format=torch.channels_last)
ref = torch.nn.Conv2d(64, 64, 3, padding=1)
ref.load_state_dict(conv.state_dict())
x = torch.randn(64, 64, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
counts = []
for net in (conv, ref):
    with FlopCounterMode(display=False) as fc, torch.autocast("cpu", dtype=torch.bfloat16):
        net(x).float().square().sum().backward()
    counts.append(fc.get_total_flops())
assert counts[0] == counts[1] > 0, counts
torch.testing.assert_close(conv.weight.grad, ref.weight.grad)
print("ok")
"""
    run_script(code)


def test_batch_split_weight_gradient_is_repeatable():
    """The batch-split route (each of two threads runs oneDNN's single-threaded kernel on half the
    batch) gives bitwise the same gradients call after call, from the first call of a fresh process
    on (a thread's first parallel call once changed its thread count mid-call), with the data at
    other addresses. In a subprocess: fresh OpenMP threads, and a hang fails instead of stalling."""
    code = """
import torch
from kuosan.ops import cpu
torch.set_num_threads(2)
ext = cpu.extension()
torch.manual_seed(0)
for batch, c_in, c_out, k, size, dtype in [(64, 48, 32, 3, 8, torch.bfloat16), (16, 32, 32, 1, 6, torch.float32),
                                           (7, 24, 16, 3, 9, torch.bfloat16)]:
    x = torch.randn(batch, c_in, size, size).to(dtype).contiguous(memory_format=torch.channels_last)
    dy = torch.randn(batch, c_out, size, size).to(dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(c_out, c_in, k, k).to(dtype).contiguous(memory_format=torch.channels_last)
    first = None
    for i in range(6):
        junk = [torch.full((100000 * (i + 1),), float("nan")) for _ in range(3)]
        del junk
        flat = torch.empty(x.numel() + 8 * i, dtype=dtype)
        xi = flat[8 * i:].as_strided(x.shape, x.stride()).copy_(x)
        r = ext.conv2d_backward(dy, xi, w, [1, 1], [k // 2] * 2, [1, 1], 1, True, True, True)
        assert r[3] == "split", r[3]
        first = first or r
        assert all(torch.equal(a, b) for a, b in zip(r[:3], first[:3])), (batch, i)
print("ok")
"""
    run_script(code)


amx = pytest.mark.skipif(
    not (kernels_available() and cpu.extension().amx_weight_grad_available()), reason="no AMX tiles on this CPU"
)


@amx
@pytest.mark.parametrize(
    "batch,c_in,c_out,size",
    [
        (5, 32, 64, (9, 7)),  # odd batch: uneven halves
        (1, 64, 32, (3, 3)),  # one sample: one half empty
        (2, 32, 32, (1, 1)),
        (6, 96, 64, (16, 16)),  # several chunks of pixels a half
        (3, 32, 96, (2, 40)),
    ],
)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("k", [3, 1])
def test_amx_weight_gradient_matches_definition(two_threads, batch, c_in, c_out, size, bias, k):
    """The AMX route (bfloat16 3x3 and 1x1 convolutions, stride 1, padding k // 2) against float64
    gradients of the same bfloat16 values: to bfloat16's rounding (2^-8 of the largest gradient);
    bitwise the same on a second call with the data at other addresses."""
    ext = cpu.extension()
    torch.manual_seed(0)
    cl = torch.channels_last
    x = torch.randn(batch, c_in, *size).to(torch.bfloat16).contiguous(memory_format=cl)
    dy = torch.randn(batch, c_out, *size).to(torch.bfloat16).contiguous(memory_format=cl)
    w = torch.randn(c_out, c_in, k, k).to(torch.bfloat16).contiguous(memory_format=cl)
    r = ext.conv2d_backward(dy, x, w, [1, 1], [k // 2] * 2, [1, 1], 1, True, True, bias)
    assert r[3] == "amx"
    ref = torch.ops.aten.convolution_backward(
        dy.double(), x.double(), w.double(), [c_out], [1, 1], [k // 2] * 2, [1, 1], False, [0, 0], 1, [True, True, True]
    )
    assert r[1].dtype == torch.bfloat16 and r[1].is_contiguous(memory_format=cl)
    for got, want in zip(r[: 2 + bias], ref):
        assert ((got.double() - want).abs().max() / want.abs().max()).item() < 2**-8
    if not bias:
        assert r[2] is None
    flat = torch.empty(x.numel() + 24, dtype=x.dtype)
    x2 = flat[24:].as_strided(x.shape, x.stride()).copy_(x)
    again = ext.conv2d_backward(dy, x2, w, [1, 1], [k // 2] * 2, [1, 1], 1, False, True, bias)
    assert torch.equal(again[1], r[1]) and (not bias or torch.equal(again[2], r[2]))


@amx
def test_amx_route_serves_the_unet_convolutions(two_threads):
    """Through nn.Conv2d under bfloat16 autocast, as the U-Net trains: the parameters' float32
    gradients match float64 ones; float32 training and 3x3 convolutions whose channels are not
    multiples of 32 keep the other routes."""
    ext = cpu.extension()
    torch.manual_seed(0)
    conv = Conv2d(64, 32, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(8, 64, 6, 6).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    g = torch.randn(y.shape).contiguous(memory_format=torch.channels_last)
    y.backward(g.to(y.dtype))
    ref = torch.nn.Conv2d(64, 32, 3, padding=1).double()
    ref.load_state_dict(conv.state_dict())
    ref(x.to(torch.bfloat16).double()).backward(g.to(torch.bfloat16).double())
    for p, q in ((conv.weight, ref.weight), (conv.bias, ref.bias)):
        assert p.grad.dtype == torch.float32
        assert ((p.grad.double() - q.grad).abs().max() / q.grad.abs().max()).item() < 5e-3
    bf, cl = torch.bfloat16, torch.channels_last
    xb, gb = x.to(bf), g.to(bf).contiguous(memory_format=cl)
    w = conv.weight.detach().contiguous(memory_format=cl)
    assert ext.conv2d_backward(gb, xb, w.to(bf), [1, 1], [1, 1], [1, 1], 1, True, True, True)[3] == "amx"
    assert ext.conv2d_backward(g, x, w, [1, 1], [1, 1], [1, 1], 1, True, True, True)[3] != "amx"
    assert (
        ext.conv2d_backward(
            gb[:, :24].contiguous(memory_format=cl), xb, w[:24].to(bf), [1, 1], [1, 1], [1, 1], 1, True, True, True
        )[3]
        != "amx"
    )
    # nor strided, unpadded, dilated or grouped ones, or an NCHW input: those keep the other routes,
    # with PyTorch's values
    wb = w.to(bf)
    for stride, padding, dilation, groups, xin in (
        ([2, 2], [1, 1], [1, 1], 1, xb),
        ([1, 1], [0, 0], [1, 1], 1, xb),
        ([1, 1], [2, 2], [2, 2], 1, xb),
        ([1, 1], [1, 1], [1, 1], 2, xb),
        ([1, 1], [1, 1], [1, 1], 1, xb.contiguous()),
    ):
        wg = wb[:, : 64 // groups].contiguous(memory_format=cl)
        dyg = F.conv2d(xin.float(), wg.float(), None, stride, padding, dilation, groups).to(bf)
        dyg = torch.randn_like(dyg).contiguous(memory_format=cl)
        r = ext.conv2d_backward(dyg, xin, wg, stride, padding, dilation, groups, True, True, True)
        want = torch.ops.aten.convolution_backward(
            dyg.double(),
            xin.double(),
            wg.double(),
            [32],
            stride,
            padding,
            dilation,
            False,
            [0, 0],
            groups,
            [True, True, True],
        )
        assert r[3] != "amx", (stride, padding, dilation, groups)
        for got, ref_ in zip(r[:3], want):
            assert ((got.double() - ref_).abs().max() / ref_.abs().max()).item() < 1e-2


@pytest.mark.parametrize("groups,dilation", [(4, 1), (1, 2)])
def test_grouped_or_dilated_convolutions_keep_onednn_weight_gradient(two_threads, groups, dilation):
    """The rewritten routes were timed on ungrouped, undilated convolutions only; grouped and
    dilated ones take oneDNN's own weight gradient (same values as PyTorch's)."""
    ext = cpu.extension()
    torch.manual_seed(0)
    x = torch.randn(8, 16, 9, 9).contiguous(memory_format=torch.channels_last)
    dy = torch.randn(8, 16, 9, 9).contiguous(memory_format=torch.channels_last)
    w = torch.randn(16, 16 // groups, 3, 3).contiguous(memory_format=torch.channels_last)
    r = ext.conv2d_backward(dy, x, w, [1, 1], [dilation] * 2, [dilation] * 2, groups, True, True, True)
    ref = torch.ops.aten.convolution_backward(
        dy, x, w, [16], [1, 1], [dilation] * 2, [dilation] * 2, False, [0, 0], groups, [True, True, True]
    )
    assert r[3] == "onednn"
    for a, b in zip(r[:3], ref):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("what", ["height", "width", "out_channels", "batch", "in_channels"])
def test_conv_backward_rejects_shapes_that_disagree(what):
    """dy, x and w must describe one convolution: every route indexes dy through x's and w's sizes,
    so a dy of another size is an error, not a read past its end (here with the AMX-sized bf16
    shapes and need_input=False, where oneDNN would not look at dy's shape)."""
    ext = cpu.extension()
    cl, bf = torch.channels_last, torch.bfloat16
    x = torch.randn(4, 32, 8, 8).to(bf).contiguous(memory_format=cl)
    w = torch.randn(32, 32, 3, 3).to(bf).contiguous(memory_format=cl)
    dy_shape = {
        "height": (4, 32, 7, 8),
        "width": (4, 32, 8, 9),
        "out_channels": (4, 64, 8, 8),
        "batch": (2, 32, 8, 8),
        "in_channels": (4, 32, 8, 8),
    }[what]
    if what == "in_channels":
        x = torch.randn(4, 64, 8, 8).to(bf).contiguous(memory_format=cl)
    dy = torch.randn(dy_shape).to(bf).contiguous(memory_format=cl)
    with pytest.raises(RuntimeError, match="conv2d_backward"):
        ext.conv2d_backward(dy, x, w, [1, 1], [1, 1], [1, 1], 1, False, True, True)


@amx
@pytest.mark.parametrize(
    "batch,n,heads,d",
    [(3, 256, 1, 128), (2, 64, 2, 32), (1, 128, 4, 64), (5, 32, 3, 96), (4, 16, 2, 64), (3, 48, 1, 32)],
)  # 16, 48: padded to the tile grid
def test_amx_self_attention_matches_float64(two_threads, batch, n, heads, d):
    """The AMX self-attention kernel (forward and d(qkv)) against the float64 definition, within
    bf16 rounding; PyTorch's bf16 route is checked to the same bound, which it needs about twice of."""
    torch.manual_seed(0)
    qkv = (1.5 * torch.randn(batch, n, 3 * heads * d)).bfloat16().requires_grad_()
    assert autograd.self_attention_applies(qkv.detach(), heads)
    out = ops.self_attention(qkv, heads)
    g = torch.randn_like(out)
    out.backward(g)
    ref_in = qkv.detach().double().requires_grad_()
    ref = ops.reference.self_attention(ref_in, heads)
    ref.backward(g.double())
    assert out.shape == (batch, n, heads * d) and out.dtype == torch.bfloat16
    assert (out.double() - ref).abs().max() < 1e-2 * ref.abs().max()
    assert (qkv.grad.double() - ref_in.grad).abs().max() < 1e-2 * ref_in.grad.abs().max()


@amx
def test_amx_self_attention_where_it_applies_and_its_double_backward(two_threads):
    """Token counts off the 16-row grid, head widths off the 32-column grid, float32, and a Python dispatch mode take
    PyTorch's operations; a backward with create_graph recomputes through them, so first and
    second derivatives equal the PyTorch route's."""
    from torch.utils.flop_counter import FlopCounterMode

    ok = torch.randn(2, 64, 3 * 64).bfloat16()
    assert autograd.self_attention_applies(ok, 2)
    for bad, heads in (
        (torch.randn(2, 24, 3 * 64).bfloat16(), 2),
        (torch.randn(2, 64, 3 * 48).bfloat16(), 1),
        (ok.float(), 2),
        (ok.transpose(0, 1).contiguous().transpose(0, 1), 2),
        (ok, 5),
    ):
        assert not autograd.self_attention_applies(bad, heads)
    with FlopCounterMode(display=False):
        assert not autograd.self_attention_applies(ok, 2)
    derivatives, w = [], torch.randn(2, 64, 64)  # a linear loss: the same output gradient on both routes
    for route in (ops.self_attention, ops.reference.self_attention):
        x = ok.clone().requires_grad_()
        (dx,) = torch.autograd.grad((route(x, 2).float() * w).sum(), x, create_graph=True)
        (ddx,) = torch.autograd.grad(dx.float().square().sum(), x)
        derivatives.append((dx.detach(), ddx))
    assert torch.equal(derivatives[0][0], derivatives[1][0]) and torch.equal(derivatives[0][1], derivatives[1][1])


@amx
def test_attention_block_takes_the_amx_kernel_under_autocast(two_threads, monkeypatch):
    """SelfAttention2d under bf16 autocast runs the kernel, and agrees with its PyTorch route to
    bf16 rounding, forward and gradients of input and projections."""
    from kuosan.networks.attention import SelfAttention2d

    torch.manual_seed(0)
    block = SelfAttention2d(channels=64, num_heads=2).to(memory_format=torch.channels_last)
    torch.nn.init.normal_(block.proj_out.weight, std=0.1)
    x0 = torch.randn(3, 64, 8, 8).contiguous(memory_format=torch.channels_last)
    calls = []
    kernel = autograd.SelfAttention.apply
    results = []
    for use in (True, False):
        monkeypatch.setattr(autograd.SelfAttention, "apply", lambda *a: calls.append(1) or kernel(*a))
        monkeypatch.setattr(
            autograd,
            "self_attention_applies",
            lambda qkv, h, _use=use, _f=autograd.self_attention_applies: _use and _f(qkv, h),
        )
        block.zero_grad()
        x = x0.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = block(x)
        (y.float() * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        results.append([y.float(), x.grad, block.qkv.weight.grad, block.proj_out.weight.grad])
        monkeypatch.undo()
    assert len(calls) == 1
    for a, b in zip(*results):
        assert (a - b).abs().max() < 2e-2 * b.abs().max()


@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("residual", [False, True])
def test_channel_linear_is_the_linear_layer_per_pixel(two_threads, autocast, residual):
    """channel_linear on a channels-last input (the 1x1 convolution with the custom backward and
    the residual inside) against nn.Linear on the (B, H, W, C) pixels: output and the gradients of
    input, weight, bias and residual (float32: to rounding; bf16 autocast: to bf16 rounding)."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96)
    x0, r0 = torch.randn(3, 64, 5, 7), torch.randn(3, 96, 5, 7)
    results = []
    for fmt in (torch.channels_last, torch.contiguous_format):
        lin.zero_grad()
        x = x0.contiguous(memory_format=fmt).requires_grad_()
        r = r0.contiguous(memory_format=fmt).requires_grad_()
        if fmt == torch.channels_last:
            assert autograd.conv_backward_applies(x, lin.weight) == kernels_available()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = (
                ops.channel_linear(x, lin, residual=r if residual else None)
                if fmt == torch.channels_last
                else lin(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) + (r if residual else 0)
            )
        (y.float() * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
        results.append([y.float(), x.grad, lin.weight.grad, lin.bias.grad] + ([r.grad] if residual else []))
    tol = 2e-2 if autocast else 1e-5
    for a, b in zip(*results):
        assert a.shape == b.shape and (a - b).abs().max() <= tol * b.abs().max()
