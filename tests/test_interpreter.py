"""The engine's identities: F x0 + r = f(x0), <Fv,u> = <v,Fᵀu>, F = Jacobian for piecewise-linear nets,
contributions sum to r (and equal the paper's Q_i b̂_i), hand-checked rules, windows equal full passes."""
from __future__ import annotations

import math
import re

import pytest
import torch
import torchvision
from torch import nn

from pipeline.interpreter import InputError, UnsupportedOperation, interpret
from pipeline.models.bicubic import Bicubic
from pipeline.models.cyclegan import ResnetGenerator, UnetGenerator
from pipeline.models.edsr import EDSR
from pipeline.models.pixelshuffle import PixelShuffleNet


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-zero biases, norm affines and running statistics, so that every bias source matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1:  # norm weights
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
        for name, buf in model.named_buffers():
            if name.endswith("running_mean"):
                buf.copy_(0.1 * torch.randn(buf.shape, generator=g))
            elif name.endswith("running_var"):
                buf.copy_(0.5 + torch.rand(buf.shape, generator=g))
    return model.eval()


def dense(li, x0) -> torch.Tensor:
    """F as a matrix (outputs × inputs), column by column."""
    n = x0[0].numel()
    eye = torch.eye(n, dtype=x0.dtype).reshape(n, *x0.shape[1:])
    cols = torch.cat([li.forward(eye[i:i + 256]) for i in range(0, n, 256)])
    return cols.reshape(n, -1).T


CLASSIFIERS = [
    ("alexnet", 64), ("squeezenet1_0", 48), ("squeezenet1_1", 48),
    ("vgg11", 32), ("vgg13", 32), ("vgg16", 32), ("vgg19", 32),
    ("vgg11_bn", 32), ("vgg13_bn", 32), ("vgg16_bn", 32), ("vgg19_bn", 32),
    ("resnet18", 32), ("resnet34", 32), ("resnet50", 32), ("resnet101", 32), ("resnet152", 32),
    ("densenet121", 32), ("densenet161", 32), ("densenet169", 32), ("densenet201", 32),
    ("inception_v3", 75),
    # layer norm over channels and stochastic depth; squeeze-excitation gates (on 1×1 maps at this size),
    # hardswish and SiLU; grouped convolutions; channel shuffles
    ("convnext_tiny", 32), ("efficientnet_b0", 32), ("mobilenet_v3_small", 32), ("mobilenet_v2", 32),
    ("regnet_x_400mf", 32), ("shufflenet_v2_x0_5", 32),
]


def _classifier(name):
    kwargs = {"init_weights": True, "aux_logits": False} if name == "inception_v3" else {}
    return randomize(getattr(torchvision.models, name)(**kwargs))


#: name -> a factory of (model, x0); built lazily, one per test
IMAGE_TO_IMAGE = {
    "bicubic-x4": lambda: (Bicubic(4), torch.rand(1, 3, 12, 12)),
    "pixelshuffle-x4": lambda: (randomize(PixelShuffleNet(4)), torch.rand(1, 1, 16, 16)),
    "edsr-baseline-x4": lambda: (randomize(EDSR(scale=4)), 255 * torch.rand(1, 3, 12, 12)),
    "edsr-x4": lambda: (randomize(EDSR(scale=4, n_resblocks=32, n_feats=256, res_scale=0.1)),
                        255 * torch.rand(1, 3, 8, 8)),
    "cyclegan-resnet9": lambda: (randomize(ResnetGenerator(ngf=64, n_blocks=9)), 2 * torch.rand(1, 3, 32, 32) - 1),
    "unet": lambda: (randomize(UnetGenerator(3, 3, num_downs=5, ngf=8)), 2 * torch.rand(1, 3, 32, 32) - 1),
}


def _check_identities(model, x0, contributions=True):
    li = interpret(model, x0)
    with torch.no_grad():
        y = model(x0)
    assert torch.equal(li.output, y)
    scale = y.abs().max()
    assert (li.forward(x0) + li.residual - y).abs().max() <= 1e-4 * scale
    g = torch.Generator().manual_seed(1)
    v = torch.randn((2, *x0.shape[1:]), generator=g, dtype=x0.dtype)
    u = torch.randn((2, *y.shape[1:]), generator=g, dtype=x0.dtype)
    fv, ftu = li.forward(v), li.transpose(u)
    assert abs((fv * u).sum() - (v * ftu).sum()) <= 1e-5 * fv.norm() * u.norm()
    if contributions:
        parts = li.contributions()
        total = sum(parts.values())
        assert (total - li.residual).abs().max() <= 1e-4 * li.residual.abs().max().clamp_min(1e-12)
    return li


@pytest.mark.parametrize("name,size", CLASSIFIERS, ids=[c[0] for c in CLASSIFIERS])
def test_classifier_reconstruction_and_adjoint(name, size):
    torch.manual_seed(0)
    model = _classifier(name)
    few_sources = name in ("alexnet", "vgg11", "vgg11_bn", "resnet18", "squeezenet1_1")
    li = _check_identities(model, torch.rand(1, 3, size, size), contributions=few_sources)
    assert li.residual.abs().max() > 0  # the biases really contribute


@pytest.mark.parametrize("name", list(IMAGE_TO_IMAGE))
def test_image_to_image_reconstruction_and_adjoint(name):
    torch.manual_seed(0)
    model, x0 = IMAGE_TO_IMAGE[name]()
    li = _check_identities(model, x0, contributions=name != "edsr-x4")
    if name != "bicubic-x4":
        assert li.residual.abs().max() > 0


@pytest.mark.parametrize("which", ["vgg11_bn", "resnet18", "edsr-baseline"])
def test_forward_equals_jacobian_for_piecewise_linear_nets(which):
    """float64: rows of F (by `transpose`) and columns (by `forward`) equal those of torch.func's Jacobian."""
    torch.manual_seed(0)
    if which == "edsr-baseline":
        model, x0 = randomize(EDSR(scale=4)).double(), 255 * torch.rand(1, 3, 8, 8, dtype=torch.float64)
        li = interpret(model, x0)
        jac = torch.func.jacfwd(model)(x0).reshape(li.output.numel(), -1)
        ours = dense(li, x0)
    else:
        model, x0 = _classifier(which).double(), torch.rand(1, 3, 32, 32, dtype=torch.float64)
        li = interpret(model, x0)
        classes = torch.randperm(1000, generator=torch.Generator().manual_seed(0))[:64]
        jac = torch.func.jacrev(lambda x: model(x)[0, classes], chunk_size=32)(x0).reshape(64, -1)
        u = torch.zeros(64, 1000, dtype=torch.float64)
        u[torch.arange(64), classes] = 1.0
        ours = li.transpose(u).reshape(64, -1)
    assert (ours - jac).abs().max() <= 1e-10 * max(1.0, jac.abs().max().item())


def test_differentiable_forward_gives_the_weights_gradients_of_the_jvp():
    """For a piecewise-linear net, F v is the JVP at x0, and its weight gradients (masks held, as the frozen
    state is) equal autograd's through torch.func.jvp; without `differentiable`, nothing is recorded."""
    torch.manual_seed(0)
    model = randomize(EDSR(scale=2, n_resblocks=2, n_feats=8)).double()
    x0, v = 255 * torch.rand(1, 3, 8, 8, dtype=torch.float64), torch.randn(2, 3, 8, 8, dtype=torch.float64)
    li = interpret(model, x0)
    assert li.forward(v).grad_fn is None
    weights = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    ours = torch.autograd.grad((li.forward(v, differentiable=True) ** 2).sum(), weights)
    jvp = torch.cat([torch.func.jvp(model, (x0,), (v[i:i + 1],))[1] for i in range(2)])
    theirs = torch.autograd.grad((jvp ** 2).sum(), weights)
    for a, b in zip(ours, theirs):
        assert b.abs().max() > 0 and torch.allclose(a, b, rtol=1e-9, atol=1e-9 * b.abs().max().item())


def test_contributions_are_the_papers_forward_projected_masked_biases():
    """A small sequential ReLU net: Q_i b̂_i with Ŵ_k = A_k W_k, b̂_k = A_k b_k, Q_i = Ŵ_n···Ŵ_{i+1}, by hand."""
    torch.manual_seed(3)
    net = randomize(nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1),
                                  nn.ReLU(), nn.Conv2d(3, 2, 1)), seed=3).double()
    x0 = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    convs = [net[0], net[2], net[4]]

    def matrix(conv, shape):
        n = math.prod(shape)
        eye = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
        return torch.nn.functional.conv2d(eye, conv.weight, None, padding=conv.padding).reshape(n, -1).T

    shapes = [(2, 5, 5), (4, 5, 5), (3, 5, 5)]
    W = [matrix(c, s) for c, s in zip(convs, shapes)]
    b = [c.bias.detach().repeat_interleave(25) for c in convs]
    x, A = x0.flatten(), []
    for k in range(3):
        y = W[k] @ x + b[k]
        A.append(torch.diag((y > 0).double()) if k < 2 else torch.eye(len(y), dtype=torch.float64))
        x = A[k] @ y
    W_hat = [A[k] @ W[k] for k in range(3)]
    b_hat = [A[k] @ b[k] for k in range(3)]
    Q = [W_hat[2] @ W_hat[1], W_hat[2], torch.eye(50, dtype=torch.float64)]
    expected = [Q[i] @ b_hat[i] for i in range(3)]

    li = interpret(net, x0)
    parts = li.contributions()
    assert list(parts) == ["0 (bias)", "2 (bias)", "4 (bias)"]
    for got, want in zip(parts.values(), expected):
        assert torch.allclose(got.flatten(), want, atol=1e-12)
    F_hand = W_hat[2] @ W_hat[1] @ W_hat[0]
    assert torch.allclose(dense(li, x0), F_hand, atol=1e-12)
    assert torch.allclose(li.residual.flatten(), sum(expected), atol=1e-12)


def test_instance_norm_is_diagonal_with_gain_over_frozen_sigma():
    torch.manual_seed(0)
    norm = nn.InstanceNorm2d(3, affine=True)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([0.5, 2.0, -1.5]))
        norm.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x0 = torch.randn(1, 3, 4, 5, dtype=torch.float64) * 3 + 1
    li = interpret(norm.double(), x0)
    sigma = torch.sqrt(x0.var(dim=(2, 3), unbiased=False) + norm.eps).flatten()
    gains = (norm.weight.detach() / sigma).repeat_interleave(20)
    assert torch.allclose(dense(li, x0), torch.diag(gains), atol=1e-12)
    assert torch.allclose(li.forward(x0) + li.residual, norm(x0), atol=1e-12)


@pytest.mark.parametrize("unit,offset", [(nn.Sigmoid(), 0.5), (nn.Tanh(), 0.0)])
def test_smooth_units_use_the_secant_gain(unit, offset):
    x0 = torch.randn(1, 2, 3, 3, dtype=torch.float64) * 2
    x0[0, 0, 0, 0] = 0.0  # the gain there is h'(0)
    li = interpret(unit, x0)
    h = unit(x0)
    secant = torch.where(x0 == 0, torch.autograd.functional.jacobian(unit, torch.zeros(1, dtype=torch.float64))[0],
                         (h - unit(torch.zeros_like(x0))) / torch.where(x0 == 0, 1.0, x0))
    assert torch.allclose(dense(li, x0), torch.diag(secant.flatten()), atol=1e-12)
    assert torch.allclose(li.residual, torch.full_like(h, offset), atol=1e-12)


def test_max_pool_columns_are_one_hot_at_the_selected_switches():
    torch.manual_seed(0)
    x0 = torch.randn(1, 2, 6, 6)
    pool = nn.MaxPool2d(2)
    li = interpret(pool, x0)
    F = dense(li, x0)  # (2*3*3) × (2*6*6)
    _, idx = torch.nn.functional.max_pool2d(x0, 2, return_indices=True)
    expected = torch.zeros_like(F)
    for c in range(2):
        for k, j in enumerate(idx[0, c].flatten().tolist()):
            expected[c * 9 + k, c * 36 + j] = 1.0
    assert torch.equal(F, expected)
    assert (F.sum(0) <= 1).all()


def _cubic(t: float, a: float = -0.75) -> float:
    t = abs(t)
    if t <= 1:
        return (a + 2) * t ** 3 - (a + 3) * t ** 2 + 1
    if t < 2:
        return a * t ** 3 - 5 * a * t ** 2 + 8 * a * t - 4 * a
    return 0.0


def _bicubic_matrix(n: int, scale: int) -> torch.Tensor:
    """(scale·n) × n: torch's bicubic upscaling along one axis (half-pixel centres, clamped borders)."""
    M = torch.zeros(scale * n, n, dtype=torch.float64)
    for o in range(scale * n):
        t = (o + 0.5) / scale - 0.5
        i0 = math.floor(t)
        for j in range(i0 - 1, i0 + 3):
            M[o, min(max(j, 0), n - 1)] += _cubic(t - j)
    return M


def test_bicubic_columns_are_the_bicubic_kernel_and_r_is_zero():
    n, scale = 10, 4
    x0 = torch.rand(1, 3, n, n, dtype=torch.float64)
    li = interpret(Bicubic(scale), x0)
    assert torch.equal(li.residual, torch.zeros_like(li.residual))
    assert not li.contributions()
    M = _bicubic_matrix(n, scale)
    K = torch.kron(M, M)  # per channel; channels do not mix
    expected = torch.block_diag(K, K, K)
    assert torch.allclose(dense(li, x0), expected, atol=1e-12)


class _Cumprod(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return torch.cumprod(self.conv(x), 1)


def test_unsupported_operation_names_the_operation_and_where():
    with pytest.raises(UnsupportedOperation, match=r"cumprod.*'cumprod'"):
        interpret(_Cumprod(), torch.rand(1, 3, 4, 4))
    with pytest.raises(UnsupportedOperation, match=r"module LocalResponseNorm at 'act'"):
        interpret(_with_local_response_norm(), torch.rand(1, 3, 4, 4))

    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    with pytest.raises(UnsupportedOperation, match="cannot be traced"):
        interpret(Branchy(), torch.rand(1, 3, 4, 4))

    class Labels(nn.Module):
        def forward(self, x):
            return x.argmax(dim=1, keepdim=True)

    with pytest.raises(UnsupportedOperation, match=r"its values are int64 \(from 'argmax'\), not floating-point"):
        interpret(Labels(), torch.rand(1, 3, 4, 4))


def _with_local_response_norm():
    net = nn.Sequential()
    net.add_module("conv", nn.Conv2d(3, 3, 1))
    net.add_module("act", nn.LocalResponseNorm(2))
    return net


def test_bad_x0_gives_one_line_errors():
    net = nn.Sequential(nn.Conv2d(3, 4, 3))
    for bad, match in [(torch.rand(3, 8, 8), "shape"), (torch.rand(1, 1, 8, 8), "3 input channels"),
                       (torch.zeros(1, 3, 8, 8, dtype=torch.int64), "floating-point")]:
        with pytest.raises(InputError, match=match) as err:
            interpret(net, bad)
        assert "\n" not in str(err.value)
    li = interpret(net, torch.rand(1, 3, 8, 8))
    with pytest.raises(InputError, match="batch of shape"):
        li.forward(torch.rand(2, 3, 9, 8))


def test_model_modes_are_restored_and_train_mode_batch_norm_freezes_x0_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).train()
    x0 = torch.rand(1, 3, 6, 6)
    interpret(net, x0)
    assert all(m.training for m in net.modules())
    li = interpret(net, x0, eval_mode=False)
    with torch.no_grad():
        y = net(x0)
    assert torch.allclose(li.forward(x0) + li.residual, y, atol=1e-5)


def test_backprojections_carry_each_masked_bias_from_its_layer_output():
    """P_i b̂_i (appendix, eq. 9–10): b̂ = A(G b + β) + c at the output of the layer conv → BN → unit, then the
    transpose of the map from the input to there, Wᵀ G A; per source the layer's three parts, which add up."""
    torch.manual_seed(0)
    net = randomize(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Sigmoid(),
                                  nn.Conv2d(4, 2, 3, padding=1))).double().eval()
    conv1, bn, _, conv2 = net
    x0 = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    li = interpret(net, x0)
    back = li.backprojections()
    assert list(back) == li.sources == ["0 (bias)", "1 (shift)", "2 (offset)", "3 (bias)"]
    with torch.no_grad():
        gain = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).view(1, 4, 1, 1)
        shift = bn.bias.view(1, 4, 1, 1) - gain * bn.running_mean.view(1, 4, 1, 1)
        z = net[:2](x0)
        a = (torch.sigmoid(z) - 0.5) / z  # the sigmoid's secant gain; its constant c = h(0) = 0.5
    b1 = conv1.bias.view(1, 4, 1, 1).expand(1, 4, 6, 6)

    def from_layer1(masked):  # P_1 = W_1ᵀ G A
        return torch.nn.grad.conv2d_input((1, 3, 6, 6), conv1.weight, gain * a * masked, padding=1)
    want = {"0 (bias)": from_layer1(a * gain * b1), "1 (shift)": from_layer1(a * shift.expand(1, 4, 6, 6)),
            "2 (offset)": from_layer1(torch.full((1, 4, 6, 6), 0.5, dtype=torch.float64))}
    b2 = conv2.bias.view(1, 2, 1, 1).expand(1, 2, 6, 6)  # the last layer has no unit: b̂ = b
    want["3 (bias)"] = from_layer1(torch.nn.grad.conv2d_input((1, 4, 6, 6), conv2.weight, b2, padding=1))
    for name, expected in want.items():
        assert torch.allclose(back[name], expected, rtol=1e-10, atol=1e-12), name
    layer = from_layer1(a * (gain * b1 + shift) + 0.5)
    assert torch.allclose(back["0 (bias)"] + back["1 (shift)"] + back["2 (offset)"], layer, atol=1e-12)
    # a ReLU mask is idempotent: the first conv's bias comes back masked once, through conv1ᵀ
    relu_net = randomize(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                                       nn.Conv2d(4, 2, 3, padding=1))).double()
    li = interpret(relu_net, x0)
    mask = (relu_net[0](x0) > 0).double()
    b1 = relu_net[0].bias.view(1, 4, 1, 1).expand(1, 4, 6, 6)
    want = torch.nn.grad.conv2d_input((1, 3, 6, 6), relu_net[0].weight, mask * b1, padding=1)
    assert 0 < mask.mean() < 1 and torch.allclose(li.backprojections()["0 (bias)"], want, atol=1e-12)


class _SmallUnet(nn.Module):
    """Max-pool down, bilinear up, a skip by concatenation, functional (leaky) ReLUs."""

    def __init__(self):
        super().__init__()
        self.enc, self.pool = nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2)
        self.mid, self.up = nn.Conv2d(8, 8, 3, padding=1), nn.Upsample(scale_factor=2, mode="bilinear")
        self.dec = nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, x):
        a = torch.relu(self.enc(x))
        b = torch.nn.functional.leaky_relu(self.mid(self.pool(a)), 0.2)
        return self.dec(torch.cat([a, self.up(b)], 1))


@pytest.mark.parametrize("which", ["edsr", "unet", "cyclegan"])
def test_windows_equal_full_image_columns(which):
    torch.manual_seed(0)
    if which == "edsr":
        model, x0 = randomize(EDSR(scale=4, n_resblocks=2, n_feats=8)), 255 * torch.rand(1, 3, 32, 32)
    elif which == "unet":
        model, x0 = randomize(_SmallUnet()), torch.rand(1, 3, 48, 48)
    else:
        model, x0 = randomize(ResnetGenerator(ngf=4, n_blocks=1)), 2 * torch.rand(1, 3, 64, 64) - 1
    li = interpret(model, x0)
    radius = li.receptive_radius
    assert radius is not None and 0 < radius < 24
    H, W = x0.shape[2:]
    for top, left in [(0, 0), (12, 20), (H - 4, W - 4)]:
        win = li.window((top, left, 4, 4))
        assert win.in_box != (0, 0, H, W)
        v = torch.zeros(48, *x0.shape[1:])
        for k, (c, dy, dx) in enumerate((c, dy, dx) for c in range(3) for dy in range(4) for dx in range(4)):
            v[k, c, top + dy, left + dx] = 1.0
        full = li.forward(v)
        iy, ix, ih, iw = win.in_box
        oy, ox, oh, ow = win.out_box
        part = win.forward(v[:, :, iy:iy + ih, ix:ix + iw])
        assert (part - full[:, :, oy:oy + oh, ox:ox + ow]).abs().max() <= 1e-6
        full[:, :, oy:oy + oh, ox:ox + ow] = 0
        assert full.abs().max() == 0  # nothing reaches beyond the window


def test_global_networks_have_no_radius():
    li = interpret(_classifier("resnet18"), torch.rand(1, 3, 32, 32))
    assert li.receptive_radius is None
    assert li.window((0, 0, 4, 4)).in_box == (0, 0, 32, 32)


class _ChannelLayerNorm(nn.Module):
    """ConvNeXt's layer norm over channels: to channels-last, nn.LayerNorm(C), back."""

    def __init__(self, c):
        super().__init__()
        self.norm = nn.LayerNorm(c)
        with torch.no_grad():
            self.norm.weight.copy_(torch.linspace(0.5, 2.0, c))
            self.norm.bias.copy_(torch.linspace(-0.3, 0.4, c))

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("c,w", [(4, 5), (5, 5)])  # also C == W, where a per-channel reading broadcasts silently
def test_layer_norm_over_channels_is_diagonal_with_its_own_weights_over_each_pixels_sigma(c, w):
    norm = _ChannelLayerNorm(c).double()
    x0 = torch.randn(1, c, 3, w, dtype=torch.float64) * 2 + 0.5
    li = interpret(norm, x0)
    sigma = torch.sqrt(x0.var(dim=1, unbiased=False, keepdim=True) + norm.norm.eps)  # (1, 1, H, W)
    gains = norm.norm.weight.detach().reshape(1, c, 1, 1) / sigma
    assert torch.allclose(dense(li, x0), torch.diag(gains.flatten()), atol=1e-12)
    assert torch.allclose(li.forward(x0) + li.residual, norm(x0), atol=1e-12)


class _Broadcasts(nn.Module):
    """A learnable offset of shape (1,), a constant row (1, W) and a quotient of constants, added to features."""

    def __init__(self, w):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.beta = nn.Parameter(torch.full((1,), 0.3))
        self.register_buffer("row", torch.linspace(-1, 1, w)[None])

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return self.beta + y + self.row + 0.5 / torch.ones(1)


def test_constants_of_lower_rank_broadcast_along_the_last_dimensions():
    torch.manual_seed(0)
    model, x0 = _Broadcasts(7).double().eval(), torch.rand(1, 3, 5, 7, dtype=torch.float64)
    li = _check_identities(model, x0)
    jacobian = torch.autograd.functional.jacobian(model, x0).reshape(li.output.numel(), x0.numel())
    assert torch.allclose(dense(li, x0), jacobian, atol=1e-12)


def test_a_reduction_over_the_whole_batch_is_refused_naming_a_fix():
    class Centred(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            y = self.conv(x)
            return y - y.mean()

    with pytest.raises(UnsupportedOperation, match=r"\.mean\(\) at 'mean' gives a scalar.*dim=\(1, 2, 3\)"):
        interpret(Centred(), torch.rand(1, 3, 4, 4))


class _Gated(nn.Module):
    """A squeeze-excitation gate on a 1×1 map: gate and features have the same number of elements."""

    def __init__(self, gate_first: bool):
        super().__init__()
        self.gate_first = gate_first
        self.conv, self.pool = nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.Sigmoid())

    def forward(self, x):
        f = self.pool(torch.relu(self.conv(x)))
        s = self.fc(f)
        return s * f if self.gate_first else f * s


def test_on_a_tie_the_gate_is_frozen_not_the_features_whichever_side_it_is_on():
    torch.manual_seed(0)
    a = _Gated(True).double().eval()
    b = _Gated(False).double().eval()
    b.load_state_dict(a.state_dict())
    x0 = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    gate = a.fc(a.pool(torch.relu(a.conv(x0)))).detach()
    frozen = torch.autograd.functional.jacobian(lambda x: gate * a.pool(torch.relu(a.conv(x))), x0)
    for model in (a, b):
        assert torch.allclose(dense(interpret(model, x0), x0), frozen.reshape(4, -1), atol=1e-12)


class _Attention(nn.Module):
    """Self-attention over the pixels of a feature map, its softmax written in one of several forms."""

    FORMS = {
        "F.softmax": lambda m, z: nn.functional.softmax(z, -1),
        "torch.softmax": lambda m, z: torch.softmax(z, dim=-1),
        "torch.special.softmax": lambda m, z: torch.special.softmax(z, -1),
        "Tensor.softmax": lambda m, z: z.softmax(-1),
        "nn.Softmax": lambda m, z: m.softmax(z),
        "by hand": lambda m, z: z.exp() / z.exp().sum(-1, keepdim=True),
    }

    def __init__(self, form: str):
        super().__init__()
        self.q, self.k, self.v = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1), nn.Conv2d(3, 3, 1)
        self.softmax, self.form = nn.Softmax(-1), form

    def forward(self, x):
        n, c, h, w = x.shape
        q, k, v = self.q(x).flatten(2), self.k(x).flatten(2), self.v(x).flatten(2)
        weights = self.FORMS[self.form](self, q.transpose(1, 2) @ k)
        return x + (v @ weights.transpose(1, 2)).view(n, c, h, w)


def test_softmax_is_exp_by_its_secant_over_the_frozen_sum_in_every_form():
    """Every form of softmax gets the F of its definition written out (exp: a secant through 0, the sum: a frozen
    denominator), which is not the Jacobian: the sum's own dependence on x is dropped."""
    x0 = torch.rand(1, 3, 5, 5, dtype=torch.float64)
    matrices = {}
    for form in _Attention.FORMS:
        torch.manual_seed(0)
        model = randomize(_Attention(form).double())
        li = _check_identities(model, x0)
        assert not li.jacobian_exact
        matrices[form] = dense(li, x0)
    for form, matrix in matrices.items():
        assert torch.allclose(matrix, matrices["by hand"], rtol=0, atol=1e-12), form
    assert any(a["kind"] == "frozen-statistics" and a["op"] == "Softmax"
               for a in interpret(_Attention("nn.Softmax").double().eval(), x0).approximations)
    # the rule alone, on logits z: gain (exp(z0) − 1) / (z0·S0), offset 1 / S0, also at z0 = 0 and far from 0
    z0 = torch.tensor([0.0, 1e-9, -3.0, 40.0, -700.0], dtype=torch.float64)
    li = interpret(nn.Softmax(1), z0.view(1, 5, 1, 1))
    s0 = torch.exp(z0).sum()
    secant = torch.where(z0 == 0, torch.ones_like(z0), torch.special.expm1(z0) / torch.where(z0 == 0, 1.0, z0)) / s0
    f = li.forward(torch.eye(5, dtype=torch.float64).view(5, 5, 1, 1)).view(5, 5)
    assert torch.allclose(f, torch.diag(secant), rtol=1e-12, atol=0)
    assert torch.allclose(li.residual.view(5), torch.full_like(z0, 1 / s0.item()), rtol=1e-12, atol=0)


@pytest.mark.filterwarnings("ignore:Implicit dimension choice")
def test_log_softmax_leaves_the_logits_f_and_moves_r_by_the_frozen_log_sum():
    """A classifier ending in log_softmax (pytorch/examples' MNIST net does) has the F of its logits; its r is
    the logits' r minus log Σ exp(logits) at x0; implicit dimensions are torch's."""
    torch.manual_seed(0)
    logits = randomize(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 10)).double())
    x0 = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    base = interpret(logits, x0)
    log_sum = torch.logsumexp(base.output, 1, keepdim=True)
    for tail in (nn.LogSoftmax(1), lambda z: nn.functional.log_softmax(z, dim=1), lambda z: z.log_softmax(1),
                 lambda z: torch.log_softmax(z, 1), lambda z: nn.functional.log_softmax(z)):  # implicit: dim 1
        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.logits, self.tail = logits, tail

            def forward(self, x):
                return self.tail(self.logits(x))

        li = _check_identities(Net().eval(), x0)
        assert torch.equal(dense(li, x0), dense(base, x0))
        assert torch.allclose(li.residual, base.residual - log_sum, rtol=0, atol=1e-12)


class _Head(nn.Module):
    """A 3×3 convolution followed by ``tail``."""

    def __init__(self, tail):
        super().__init__()
        self.conv, self.tail = nn.Conv2d(3, 3, 3, padding=1), tail

    def forward(self, x):
        return self.tail(self.conv(x))


def _jacobian(model, x0):
    y = model(x0)
    return torch.autograd.functional.jacobian(model, x0).reshape(y.numel(), x0.numel())


@pytest.mark.parametrize("unit", [torch.sqrt, lambda h: h ** 2, lambda h: h.pow(3), lambda h: 2 ** h, torch.sin,
                                  torch.erf, lambda h: h.atan(), torch.expm1],
                         ids=["sqrt", "pow", "Tensor.pow", "rpow", "sin", "erf", "atan", "expm1"])
def test_smooth_units_with_a_finite_value_at_zero_get_their_secant(unit):
    """F = diag((h(y0) − h(0)) / y0) · W for h(W x + b), the paper's rule for smooth units."""
    torch.manual_seed(0)
    model = _Head(unit).double().eval()
    with torch.no_grad():  # y0 > 0, where every unit here is defined
        model.conv.weight.abs_()
        model.conv.bias.fill_(0.1)
    x0 = torch.rand(1, 3, 5, 5, dtype=torch.float64)
    li = _check_identities(model, x0)
    assert not li.jacobian_exact and [a["kind"] for a in li.approximations] == ["secant"]
    with torch.no_grad():
        y0 = model.conv(x0)
        gain = (unit(y0) - unit(torch.zeros_like(y0))) / y0
    weights = _jacobian(lambda x: nn.functional.conv2d(x, model.conv.weight, padding=1), x0)
    assert torch.allclose(dense(li, x0), gain.reshape(-1, 1) * weights, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("unit", [lambda h: torch.log(h.abs() + 1), lambda h: torch.rsqrt(h.abs() + 1),
                                  lambda h: (h.abs() + 1).reciprocal(), lambda h: (h.abs() + 1) ** -0.5,
                                  lambda h: h.clamp_min(0.1), lambda h: torch.clamp_max(h, 0.2),
                                  lambda h: h.repeat_interleave(2, dim=3),
                                  lambda h: nn.functional.fold(nn.functional.unfold(h, 3, padding=1), (5, 5), 3,
                                                               padding=1),
                                  lambda h: torch.rot90(h, 1, (2, 3)) + h.rot90(2, (2, 3)),
                                  lambda h: torch.tile(h, (1, 1, 2, 1))[:, :, 3:8],
                                  lambda h: torch.diff(h, dim=3, append=h[..., -1:]),
                                  lambda h: h.unfold(3, 2, 1).sum(-1),
                                  lambda h: h.masked_fill(torch.arange(5).view(1, 1, 1, 5) > 3, 0.5),
                                  lambda h: h.masked_fill(h > 0.1, -2.0)],
                         ids=["log", "rsqrt", "reciprocal", "negative power", "clamp_min", "clamp_max",
                              "repeat_interleave", "unfold-fold", "rot90", "tile", "diff", "Tensor.unfold",
                              "masked_fill", "masked_fill by a comparison"])
def test_units_without_a_value_at_zero_get_their_tangent_and_linear_ops_are_the_jacobian(unit):
    """log, rsqrt, reciprocal, negative powers: no secant through 0 exists, the tangent at y0 is the Jacobian; clamps
    and masked_fill (a mask computed from x is frozen, as comparisons are) are piecewise linear; repeat_interleave,
    unfold, fold, rot90, tile and diff are linear."""
    x0 = torch.rand(1, 3, 5, 5, dtype=torch.float64) - 0.5
    model = _Head(unit).double().eval()
    li = _check_identities(model, x0)
    assert torch.allclose(dense(li, x0), _jacobian(model, x0), rtol=1e-9, atol=1e-12)


def test_statistics_are_frozen_as_a_normalisations_and_normalize_divides_by_the_frozen_norm():
    """var, std, norms and logsumexp of the input are constants at x0 (frozen-statistics): F.normalize, x / x.norm(...)
    and x / vector_norm(...) all divide by ‖x0‖ along the dimension; a hand-written standardisation divides by
    std(x0); x − logsumexp(x) is log_softmax's F."""
    x0 = torch.rand(1, 3, 5, 5, dtype=torch.float64) - 0.5
    forms = [lambda h: nn.functional.normalize(h, dim=1), lambda h: h / h.norm(dim=1, keepdim=True),
             lambda h: h / torch.linalg.vector_norm(h, dim=1, keepdim=True)]
    torch.manual_seed(0)
    models = [_Head(f).double().eval() for f in forms]
    for m in models[1:]:
        m.load_state_dict(models[0].state_dict())
    conv = models[0].conv
    with torch.no_grad():
        norm = nn.functional.conv2d(x0, conv.weight, conv.bias, padding=1).norm(dim=1, keepdim=True)
    expected = _jacobian(lambda x: nn.functional.conv2d(x, conv.weight, padding=1) / norm, x0)
    for m in models:
        li = _check_identities(m, x0)
        assert "frozen-statistics" in [a["kind"] for a in li.approximations]
        assert torch.allclose(dense(li, x0), expected, rtol=1e-9, atol=1e-12)
    log_sum = _Head(lambda h: h - torch.logsumexp(h, 1, keepdim=True)).double().eval()
    log_sum.load_state_dict(models[0].state_dict())
    li = _check_identities(log_sum, x0)  # the F of log_softmax: the identity after the convolution
    assert torch.allclose(dense(li, x0), _jacobian(lambda x: nn.functional.conv2d(x, conv.weight, padding=1), x0),
                          rtol=1e-9, atol=1e-12)
    standardise = _Head(lambda h: (h - h.mean(1, keepdim=True)) / h.std(1, keepdim=True)).double().eval()
    li = _check_identities(standardise, x0)
    conv = standardise.conv
    with torch.no_grad():
        std = nn.functional.conv2d(x0, conv.weight, conv.bias, padding=1).std(1, keepdim=True)
    def centred(x):
        h = nn.functional.conv2d(x, conv.weight, padding=1)
        return (h - h.mean(1, keepdim=True)) / std

    assert torch.allclose(dense(li, x0), _jacobian(centred, x0), rtol=1e-9, atol=1e-12)


def test_einsum_is_linear_in_one_operand_and_a_product_of_two():
    torch.manual_seed(0)
    w = torch.rand(4, 3, dtype=torch.float64)
    x0 = torch.rand(1, 3, 5, 5, dtype=torch.float64)
    static = _Head(lambda h: torch.einsum("nchw,dc->ndhw", h, w)).double().eval()
    li = _check_identities(static, x0)
    assert li.jacobian_exact and torch.allclose(dense(li, x0), _jacobian(static, x0), rtol=1e-9, atol=1e-12)
    # two operands that depend on x: as the matmul it writes, the right one frozen on a tie of sizes
    pairs = [_Head(lambda h: torch.einsum("ncp,ncq->npq", h.flatten(2), h.flatten(2) * 2).sum(1).view(-1, 1, 5, 5)),
             _Head(lambda h: (h.flatten(2).transpose(1, 2) @ (h.flatten(2) * 2)).sum(1).view(-1, 1, 5, 5))]
    pairs[1].load_state_dict(pairs[0].state_dict())
    a, b = (_check_identities(m.double().eval(), x0) for m in pairs)
    assert "frozen-factor" in [s["kind"] for s in a.approximations]
    assert torch.allclose(dense(a, x0), dense(b, x0), rtol=1e-9, atol=1e-12)
    three = _Head(lambda h: torch.einsum("nchw,nchw,nchw->nhw", h, h * 2, h * 3)[:, None]).double().eval()
    with pytest.raises(UnsupportedOperation, match="einsum at 'einsum': a third operand depends on the input"):
        interpret(three, x0)
    with pytest.raises(UnsupportedOperation, match="masked_fill.*its fill value -inf is not finite"):
        interpret(_Head(lambda h: h.masked_fill(h > 0, float("-inf"))).double().eval(), x0)
    with pytest.raises(UnsupportedOperation,
                       match="torch.pow at 'pow_1': more than one of its arguments depends on the input"):
        interpret(_Head(lambda h: torch.pow(h, h * 2)).double().eval(), x0)


def test_random_units_are_refused_in_training_and_the_identity_in_eval():
    from torchvision.ops import StochasticDepth

    class Drop(nn.Module):
        def __init__(self, training: bool):
            super().__init__()
            self.conv, self.drop, self.on = nn.Conv2d(3, 3, 1), StochasticDepth(0.2, "row"), training

        def forward(self, x):
            return self.drop(nn.functional.dropout(self.conv(x), 0.1, training=self.on))

    x0 = torch.rand(1, 3, 4, 4)
    li = _check_identities(Drop(False).eval(), x0)
    assert li.jacobian_exact
    with pytest.raises(UnsupportedOperation, match="dropout at 'dropout': it drops values at random"):
        interpret(Drop(True).eval(), x0)


def test_a_model_that_changes_its_own_parameters_when_called_is_refused():
    """Interpreting copies no weights (buffers only): a call that clips a weight in place is the model's own change,
    refused in one line naming the parameter rather than interpreted as a fixed network."""
    class Clip(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            with torch.no_grad():
                self.conv.weight.clamp_(-0.01, 0.01)
            return self.conv(x)

    with pytest.raises(UnsupportedOperation, match=r"^calling Clip changed its parameter 'conv.weight' in place") \
            as err:
        interpret(Clip(), torch.rand(1, 3, 6, 6))
    assert "\n" not in str(err.value)


DROPOUTS = [nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.FeatureAlphaDropout]


@pytest.mark.parametrize("dropout", DROPOUTS, ids=[d.__name__ for d in DROPOUTS])
def test_dropout_modules_are_refused_in_training_mode_and_the_identity_in_eval(dropout):
    """A dropout module in training mode drops values at random, as F.dropout(training=True) does: refused the same
    way, in one line naming the module. In eval mode, or with p = 0, it is the identity: F is that of the model
    without it (exactly, for this piecewise-linear net) and F x0 + r = f(x0)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), dropout(0.5), nn.ReLU(), nn.Conv2d(4, 2, 1)).double().train()
    x0 = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    with pytest.raises(UnsupportedOperation, match=rf"^module {dropout.__name__} at '1': it drops values at random "
                                                   r"\(the module is in training mode\): interpret the model in eval "
                                                   r"mode") as err:
        interpret(net, x0, eval_mode=False)
    assert "\n" not in str(err.value)
    without = nn.Sequential(net[0], net[2], net[3])
    jacobian = torch.func.jacrev(without)(x0).reshape(-1, x0.numel())
    kept = nn.Sequential(net[0], dropout(0.0), net[2], net[3]).train()
    for li in (interpret(net, x0), interpret(kept, x0, eval_mode=False)):
        assert (dense(li, x0) - jacobian).abs().max() <= 1e-14
        with torch.no_grad():
            assert (li.forward(x0) + li.residual - without(x0)).abs().max() <= 1e-14
    assert all(m.training for m in net.modules())


class _Around(nn.Module):
    """conv -> `op(self, h)` -> conv: an operation between two layers; `layer`, if any, is a submodule for `op`."""

    def __init__(self, op, layer: nn.Module | None = None):
        super().__init__()
        self.conv, self.out, self.op, self.layer = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 1), op, layer

    def forward(self, x):
        return self.out(self.op(self, self.conv(x)))


def _same_layers(net: _Around, op) -> _Around:
    """`op` between the two convolutions of `net` (the same modules)."""
    other = _Around(op)
    other.conv, other.out = net.conv, net.out
    return other


#: RReLU in every form, slopes from `m.layer` (an nn.RReLU): the call, what the refusal names, why it samples
RRELUS = {
    "nn.RReLU": (lambda m, h: m.layer(h), "module RReLU at 'layer'", "the module is in training mode"),
    "F.rrelu": (lambda m, h: nn.functional.rrelu(h, m.layer.lower, m.layer.upper, m.training),
                "function torch.nn.functional.rrelu at 'rrelu'", "training=True"),
    "F.rrelu-inplace": (lambda m, h: nn.functional.rrelu(h, m.layer.lower, m.layer.upper, m.training, inplace=True),
                        "function torch.nn.functional.rrelu at 'rrelu'", "training=True"),
    "torch.rrelu": (lambda m, h: torch.rrelu(h, m.layer.lower, m.layer.upper, m.training),
                    "function torch.rrelu at 'rrelu'", "training=True"),
    "F.rrelu_": (lambda m, h: nn.functional.rrelu_(h, m.layer.lower, m.layer.upper, training=m.training),
                 "function torch.rrelu_ at 'rrelu_'", "training=True"),
}


@pytest.mark.parametrize("form", RRELUS, ids=list(RRELUS))
def test_rrelu_is_refused_in_training_and_a_leaky_relu_of_the_mean_slope_in_eval(form):
    """RReLU in training mode draws the slope of each negative value at random in [lower, upper]: refused in one line
    naming the layer, as dropout is. In eval mode it is a leaky ReLU of slope (lower + upper) / 2, and so it is in
    training with lower = upper: F is that net's Jacobian and F x0 + r = f(x0)."""
    op, names, why = RRELUS[form]
    torch.manual_seed(0)
    net = _Around(op, nn.RReLU(0.1, 0.3)).double().train()
    x0 = torch.rand(1, 3, 6, 6, dtype=torch.float64) - 0.5
    with torch.no_grad():
        assert (net.conv(x0) < 0).any() and (net.conv(x0) > 0).any()  # the slope matters
    with pytest.raises(UnsupportedOperation, match=rf"^{re.escape(names)}: it draws random negative slopes "
                                                   rf"\({why}\): ") as err:
        interpret(net, x0, eval_mode=False)
    assert "\n" not in str(err.value)
    leaky = _same_layers(net, lambda m, h: nn.functional.leaky_relu(h, 0.2))
    jacobian = torch.func.jacrev(leaky)(x0).reshape(-1, x0.numel())
    fixed = _Around(op, nn.RReLU(0.2, 0.2)).train()
    fixed.conv, fixed.out = net.conv, net.out
    for li in (interpret(net, x0), interpret(fixed, x0, eval_mode=False)):
        assert li.jacobian_exact
        assert (dense(li, x0) - jacobian).abs().max() <= 1e-14
        with torch.no_grad():
            assert (li.forward(x0) + li.residual - leaky(x0)).abs().max() <= 1e-14
    assert all(m.training for m in net.modules())


#: dropout functions: the call (input, p, training), the qualified name the refusal gives, the name of its flag
DROPOUT_FUNCTIONS = {
    **{f"F.{n}": (getattr(nn.functional, n), f"torch.nn.functional.{n}", "training")
       for n in ("dropout", "dropout2d", "alpha_dropout", "feature_alpha_dropout")},
    **{f"torch.{n}": (getattr(torch, n), f"torch.{n}", "train")
       for n in ("dropout", "dropout_", "feature_dropout", "feature_dropout_", "alpha_dropout", "alpha_dropout_",
                 "feature_alpha_dropout", "feature_alpha_dropout_")},
    # (output, mask): the output
    "torch.native_dropout": (lambda h, p, train: torch.native_dropout(h, p, train)[0], "torch.native_dropout", "train"),
}


@pytest.mark.parametrize("name", DROPOUT_FUNCTIONS, ids=list(DROPOUT_FUNCTIONS))
def test_dropout_functions_are_refused_when_training_and_the_identity_otherwise(name):
    """Functional dropout of every kind (torch.nn.functional's and torch's own, in place or not) called to drop
    values at random is refused in one line naming the function and its flag; called with the flag off, or p = 0, it
    is the identity: F is the Jacobian of the net without it and F x0 + r = f(x0)."""
    fn, qualname, flag = DROPOUT_FUNCTIONS[name]
    torch.manual_seed(0)
    net = _Around(lambda m, h: fn(h, 0.5, m.training)).double().train()
    x0 = torch.rand(1, 3, 6, 6, dtype=torch.float64) - 0.5
    node = qualname.rsplit(".", 1)[1]
    with pytest.raises(UnsupportedOperation, match=rf"^function {re.escape(qualname)} at '{node}': it drops values at "
                                                   rf"random \({flag}=True\): pass {flag}=self.training") as err:
        interpret(net, x0, eval_mode=False)
    assert "\n" not in str(err.value)
    without = _same_layers(net, lambda m, h: h)
    jacobian = torch.func.jacrev(without)(x0).reshape(-1, x0.numel())
    kept = _same_layers(net, lambda m, h: fn(h, 0.0, m.training)).train()
    for li in (interpret(net, x0), interpret(kept, x0, eval_mode=False)):
        assert (dense(li, x0) - jacobian).abs().max() <= 1e-14
        with torch.no_grad():
            assert (li.forward(x0) + li.residual - without(x0)).abs().max() <= 1e-14


#: random values drawn in forward: of a fixed shape (static), of the input's shape (computed from shapes) or from
#: the input's values; each with what the refusal names
RANDOM_CALLS = {
    "torch.rand": (lambda h: h + torch.rand(1, 4, 4, 4, dtype=torch.float64), "function torch.rand at 'rand'"),
    "torch.randn": (lambda h: h + torch.randn(h.shape, dtype=h.dtype), "function torch.randn at 'randn'"),
    "torch.randint": (lambda h: h * torch.randint(0, 2, h.shape), "function torch.randint at 'randint'"),
    "torch.randperm": (lambda h: h[:, torch.randperm(h.shape[1])], "function torch.randperm at 'randperm'"),
    "torch.rand_like": (lambda h: h + torch.rand_like(h), "function torch.rand_like at 'rand_like'"),
    "torch.randn_like": (lambda h: h + torch.randn_like(h), "function torch.randn_like at 'randn_like'"),
    "torch.randint_like": (lambda h: h * torch.randint_like(h, 2), "function torch.randint_like at 'randint_like'"),
    "torch.bernoulli": (lambda h: h * torch.bernoulli(h.sigmoid()), "function torch.bernoulli at 'bernoulli'"),
    "torch.normal": (lambda h: torch.normal(h, 1.0), "function torch.normal at 'normal'"),
    "torch.normal-size": (lambda h: h + torch.normal(0.0, 1.0, size=(1, 4, 4, 4), dtype=torch.float64),
                          "function torch.normal at 'normal'"),
    "torch.poisson": (lambda h: h + torch.poisson(h.abs()), "function torch.poisson at 'poisson'"),
    "torch.binomial": (lambda h: h * torch.binomial(torch.full((1, 4, 4, 4), 3.0, dtype=torch.float64),
                                                    torch.full((1, 4, 4, 4), 0.5, dtype=torch.float64)),
                       "function torch.binomial at 'binomial'"),
    "torch.multinomial": (lambda h: h.flatten(2)[:, :, torch.multinomial(h.abs().mean(1).flatten(1) + 1e-3, 16,
                                                                         replacement=True)[0]].unflatten(2, (4, 4)),
                          "function torch.multinomial at 'multinomial'"),
    "F.gumbel_softmax": (lambda h: nn.functional.gumbel_softmax(h, dim=1),
                         "function torch.nn.functional.gumbel_softmax at 'gumbel_softmax'"),
    "Tensor.bernoulli": (lambda h: h * h.sigmoid().bernoulli(), "tensor method .bernoulli() at 'bernoulli'"),
    "Tensor.multinomial": (lambda h: h.flatten(2)[:, :, (h.abs().mean(1).flatten(1) + 1e-3).multinomial(16, True)[0]]
                           .unflatten(2, (4, 4)), "tensor method .multinomial() at 'multinomial'"),
    **{f"Tensor.{n}": (lambda h, n=n, a=a: h + getattr(torch.zeros(h.shape, dtype=h.dtype), n)(*a),
                       f"tensor method .{n}() at '{n}'")
       for n, a in [("normal_", ()), ("uniform_", ()), ("bernoulli_", (0.5,)), ("exponential_", ()), ("cauchy_", ()),
                    ("log_normal_", ()), ("geometric_", (0.5,)), ("random_", (3,))]},
    "Tensor.normal_-like": (lambda h: h + torch.zeros_like(h).normal_(), "tensor method .normal_() at 'normal_'"),
    "Tensor.normal_-constant": (lambda h: h + torch.zeros(1, 4, 4, 4, dtype=torch.float64).normal_(),
                                "tensor method .normal_() at 'normal_'"),
}


@pytest.mark.parametrize("name", RANDOM_CALLS, ids=list(RANDOM_CALLS))
def test_random_values_drawn_in_forward_are_refused_naming_the_call(name):
    """A model that draws random values when called (noise, a random mask, permutation or sample) is another network
    at every call: refused in one line naming the call, in eval mode and in training mode alike (where no second
    call checks the model's output against its graph), whether the values depend on the input or not."""
    op, names = RANDOM_CALLS[name]
    torch.manual_seed(0)
    net = _Around(lambda m, h: op(h)).double()
    x0 = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    for eval_mode in (True, False):
        with pytest.raises(UnsupportedOperation, match=rf"^{re.escape(names)}: it draws random values at every call"
                                                       r".*leave the call out in eval mode") as err:
            interpret(net.train(), x0, eval_mode=eval_mode)
        assert "\n" not in str(err.value)


def test_dropout_of_a_weight_is_refused_in_training_and_the_identity_in_eval():
    """Dropout of a layer's weight (DropConnect) depends on no input, yet samples at every call: refused in training
    mode as dropout of features is; in eval mode the weight is itself, F x0 + r = f(x0) and F is the Jacobian."""
    class DropConnect(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            return nn.functional.conv2d(x, nn.functional.dropout(self.conv.weight, 0.5, self.training), self.conv.bias)

    torch.manual_seed(0)
    net, x0 = DropConnect().double().train(), torch.rand(1, 3, 6, 6, dtype=torch.float64)
    with pytest.raises(UnsupportedOperation, match=r"^function torch.nn.functional.dropout at 'dropout': it drops "
                                                   r"values at random \(training=True\)"):
        interpret(net, x0, eval_mode=False)
    li = interpret(net, x0)
    assert (dense(li, x0) - torch.func.jacrev(net.conv)(x0).reshape(-1, x0.numel())).abs().max() <= 1e-14
    with torch.no_grad():
        assert (li.forward(x0) + li.residual - net.conv(x0)).abs().max() <= 1e-14


def test_noise_left_out_in_eval_mode_is_interpreted_exactly():
    """The refusal's advice works: noise drawn only in training (if self.training) is refused in training mode and
    absent in eval mode, where F is the Jacobian of the net without it and F x0 + r = f(x0)."""
    torch.manual_seed(0)
    net = _Around(lambda m, h: h + torch.randn_like(h) if m.training else h).double().train()
    x0 = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    with pytest.raises(UnsupportedOperation, match=r"^function torch.randn_like at 'randn_like': it draws random"):
        interpret(net, x0, eval_mode=False)
    without = _same_layers(net, lambda m, h: h)
    li = interpret(net, x0)
    assert (dense(li, x0) - torch.func.jacrev(without)(x0).reshape(-1, x0.numel())).abs().max() <= 1e-14
    with torch.no_grad():
        assert (li.forward(x0) + li.residual - without(x0)).abs().max() <= 1e-14


def _functional_batch_norm_net():
    class Net(nn.Module):  # F.batch_norm with running statistics, which it updates in training mode
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.register_buffer("mean", torch.zeros(4))
            self.register_buffer("var", torch.ones(4))

        def forward(self, x):
            return torch.tanh(nn.functional.batch_norm(self.conv(x), self.mean, self.var, None, None, self.training))
    return Net()


STATEFUL = {
    "BatchNorm2d": lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1),
                                         nn.BatchNorm2d(2)),
    "InstanceNorm2d(track_running_stats)": lambda: nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.InstanceNorm2d(4, affine=True, track_running_stats=True), nn.Sigmoid()),
    "F.batch_norm with running statistics": _functional_batch_norm_net,
}


@pytest.mark.parametrize("kind", list(STATEFUL))
@pytest.mark.parametrize("eval_mode", [False, True])
def test_interpreting_leaves_the_model_bit_identical(kind, eval_mode):
    """A norm in training mode updates its running statistics (and BatchNorm num_batches_tracked) when called:
    interpreting must not, in either mode: every parameter and buffer is bit-identical afterwards. The interpreter
    still normalises with the statistics of x0 in training mode: F x0 + r = the model's own training-mode call
    (on a copy)."""
    import copy

    torch.manual_seed(0)
    model = randomize(STATEFUL[kind]()).double().train()
    x0 = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    li = interpret(model, x0, eval_mode=eval_mode)
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert after[k].dtype == v.dtype and torch.equal(after[k], v), k
    assert all(m.training for m in model.modules())
    with torch.no_grad():
        y = copy.deepcopy(model).train(not eval_mode)(x0)
    assert (li.forward(x0) + li.residual - y).abs().max() <= 1e-12 * y.abs().max()
    if not eval_mode:
        assert not li.jacobian_exact  # the statistics of x0, frozen


@pytest.mark.parametrize("unit", [nn.Sigmoid(), nn.Softplus(), nn.GELU()])
def test_secant_gains_of_a_float32_model_keep_their_digits_near_zero(unit):
    """h(y0) − h(0) cancels most float32 digits where |y0| is small and h(0) ≠ 0: the gain is taken in float64."""
    y0 = torch.tensor([1e-5, -3e-5, 1e-4, 1e-3, 0.1, 2.0]).reshape(1, 1, 2, 3)
    li = interpret(unit, y0)
    exact = (unit(y0.double()) - unit(torch.zeros(1, dtype=torch.float64))) / y0.double()
    assert torch.allclose(dense(li, y0).diagonal().double(), exact.flatten(), rtol=1e-6, atol=0)
    assert (li.forward(y0) + li.residual - unit(y0)).abs().max() <= 1e-6


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("unit", [nn.SiLU(), nn.GELU(), nn.Hardswish()])
def test_secant_gains_of_units_through_zero_are_exact_for_small_inputs_next_to_large_ones(unit, dtype, rtol):
    """h(0) = 0: h(y0) / y0 cancels nothing, so a y0 far smaller than the largest |y0| (5e-4 next to 1e3) gets its
    own secant, not h'(0) = 1/2, which misses h(y0) by y0²·h''(0)/2, and F·x0 + r = f(x0) element by element."""
    y0 = torch.tensor([1e3, 5e-4, -2e-4, 1e-9, 0.0, -1.0], dtype=dtype).reshape(1, 1, 2, 3)
    li = interpret(unit, y0)
    h = unit(y0.double())
    secant = torch.where(y0 == 0, 0.5, h / torch.where(y0 == 0, 1.0, y0.double()))
    assert torch.allclose(dense(li, y0).diagonal().double(), secant.flatten(), rtol=rtol, atol=0)
    assert torch.allclose((li.forward(y0) + li.residual).double(), h, rtol=rtol, atol=0)


class _MoreOps(nn.Module):
    """Functional channel shuffles, rms norm, squares and constants made from a tensor's shape."""

    def __init__(self, op: str):
        super().__init__()
        self.op, self.conv = op, nn.Conv2d(3, 4, 3, padding=1)
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, 4))

    def forward(self, x):
        y = self.conv(x)
        if self.op == "shuffle":
            return nn.functional.channel_shuffle(y, 2) + torch.channel_shuffle(y, 4)
        if self.op == "rms_norm":
            return nn.functional.rms_norm(y.permute(0, 2, 3, 1), (4,), self.weight).permute(0, 3, 1, 2)
        if self.op == "square":
            return torch.square(y) + y.square()
        return y + torch.zeros_like(y) + torch.full_like(y, 0.5) + y.new_ones(y.shape)


@pytest.mark.parametrize("op,exact", [("shuffle", True), ("constants", True), ("rms_norm", False),
                                      ("square", False)])
def test_functional_shuffles_rms_norm_squares_and_shape_constants(op, exact):
    torch.manual_seed(0)
    model, x0 = _MoreOps(op).double().eval(), torch.rand(1, 3, 5, 6, dtype=torch.float64)
    li = _check_identities(model, x0)
    assert li.jacobian_exact == exact
    if exact:
        jacobian = torch.autograd.functional.jacobian(model, x0).reshape(li.output.numel(), x0.numel())
        assert torch.allclose(dense(li, x0), jacobian, atol=1e-12)
    if op == "square":  # the secant of y² through 0 is y0: F = 2·diag(y0)·conv, half the Jacobian
        jacobian = torch.autograd.functional.jacobian(model, x0).reshape(li.output.numel(), x0.numel())
        assert torch.allclose(2 * dense(li, x0), jacobian, atol=1e-12)


def _filled(out, h):
    """`out` (4 channels) written in two parts, item by item: a ReLU of h's first two channels, twice the others."""
    out[:, :2] = torch.relu(h[:, :2])
    out[:, 2:] = 2 * h[:, 2:]
    return out


def _filled_out_of_place(h):
    return torch.cat([h[:, :2].relu(), 2 * h[:, 2:]], 1)


def _half_written(out, h):
    out[:, :2] = torch.relu(h[:, :2])
    return out


def _added_in_place(out, h):
    out[:, :2] += torch.relu(h[:, :2])
    return out


def _written_from_itself(h):
    out = torch.empty_like(h)
    out[:, :2] = out[:, 2:] + h[:, :2]  # reads the half never written
    return out.fill_(1.0) * h


#: tensors allocated from a traced tensor's shape (or constant), then written or used as constants: the operation
#: between the convolutions, and the same function written without them
ALLOCATED = {
    "empty_like filled": (lambda h: _filled(torch.empty_like(h), h), _filled_out_of_place),
    "torch.empty(shape) filled": (lambda h: _filled(torch.empty(h.shape, dtype=h.dtype), h), _filled_out_of_place),
    "new_empty filled": (lambda h: _filled(h.new_empty(h.shape), h), _filled_out_of_place),
    "new_empty, its written part read": (lambda h: _half_written(h.new_empty(h.shape), h)[:, :2].repeat(1, 2, 1, 1),
                                         lambda h: h[:, :2].relu().repeat(1, 2, 1, 1)),
    "new_zeros half written": (lambda h: _half_written(h.new_zeros(h.shape), h),
                               lambda h: torch.cat([h[:, :2].relu(), 0 * h[:, 2:]], 1)),
    "full_like half written": (lambda h: _half_written(torch.full_like(h, 0.5), h),
                               lambda h: torch.cat([h[:, :2].relu(), 0 * h[:, 2:] + 0.5], 1)),
    "a constant canvas half written": (lambda h: _half_written(torch.ones(1, 4, 12, 12, dtype=torch.float64), h),
                                       lambda h: torch.cat([h[:, :2].relu(), 0 * h[:, 2:] + 1], 1)),
    "ones_like, a part added to in place": (lambda h: _added_in_place(torch.ones_like(h), h),
                                            lambda h: torch.cat([1 + h[:, :2].relu(), 0 * h[:, 2:] + 1], 1)),
    "a constant map concatenated": (  # (its adjoint failed for batches of several cotangents)
        lambda h: torch.cat([h[:, :3].relu(), torch.full((1, 1, 12, 12), 0.5, dtype=torch.float64)], 1),
        lambda h: torch.cat([h[:, :3].relu(), 0 * h[:, 3:] + 0.5], 1)),
    "empty_like.fill_ + h": (lambda h: torch.empty_like(h).fill_(0.5) + h.relu(), lambda h: 0.5 + h.relu()),
    "empty_like.zero_ - h": (lambda h: torch.empty_like(h).zero_() - h.relu(), lambda h: -h.relu()),
    "new_ones(size) * h": (lambda h: h.new_ones(h.size()) * h.relu(), lambda h: h.relu()),
    "ones_like * h": (lambda h: h.relu() * torch.ones_like(h), lambda h: h.relu()),
    "new_full / 2 * h": (lambda h: h.new_full(h.shape, 4.0) / 2 * h.relu(), lambda h: 2 * h.relu()),
    "h.zero_(), an earlier copy used": (lambda h: (lambda g: (h.zero_(), g + h)[1])(h.relu() * 3),
                                        lambda h: 3 * h.relu()),
}


@pytest.mark.parametrize("kind", list(ALLOCATED))
def test_tensors_allocated_from_a_shape_are_constants_and_their_item_assignments_linear(kind):
    """A tensor allocated from a traced tensor's shape (empty_like, new_zeros, full_like, ...) and written item by item
    (`out[:, :c] = a`), filled (fill_, zero_) or used as a constant factor or term is interpreted exactly: F x0 + r =
    f(x0), F is the Jacobian (that of the same function written without it), Fᵀ is F's transpose, and a window
    (allocations recomputed on it, a constant canvas cropped) gives the whole image's columns."""
    op, same = ALLOCATED[kind]
    torch.manual_seed(0)
    net = _Around(lambda m, h: op(h))
    net.conv = nn.Conv2d(3, 4, 3, padding=1)  # feature maps of the image's size, so that windows are smaller
    net, x0 = net.double().eval(), torch.rand(1, 3, 12, 12, dtype=torch.float64) - 0.5
    reference = _same_layers(net, lambda m, h: same(h))
    li = interpret(net, x0)
    with torch.no_grad():
        y = net(x0.clone())
        assert (y - reference(x0)).abs().max() <= 1e-14
        assert (li.forward(x0) + li.residual - y).abs().max() <= 1e-14
    F = dense(li, x0)
    assert li.jacobian_exact
    assert (F - torch.func.jacrev(reference)(x0).reshape(-1, x0.numel())).abs().max() <= 1e-14
    u = torch.randn((3, *y.shape[1:]), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert (li.transpose(u).reshape(3, -1) - u.reshape(3, -1) @ F).abs().max() <= 1e-13
    window = li.window((0, 0, 2, 2))
    (iy, ix, ih, iw), (oy, ox, oh, ow) = window.in_box, window.out_box
    assert (ih, iw) != (12, 12)
    pixels = torch.eye(x0.numel(), dtype=torch.float64).reshape(-1, *x0.shape[1:])[:, :, :2, :2].flatten(1, 3)
    ones = torch.eye(x0.numel(), dtype=torch.float64)[pixels.any(1)].reshape(-1, *x0.shape[1:])
    columns = window.forward(ones[:, :, iy:iy + ih, ix:ix + iw])
    assert (columns - li.forward(ones)[:, :, oy:oy + oh, ox:ox + ow]).abs().max() <= 1e-14


#: reads of elements of an uninitialised tensor before they are written, and the call the refusal names
GARBAGE = {
    "empty_like read": (lambda h: torch.empty_like(h) * 0 + h, "function _operator.mul at 'mul'"),
    "new_empty half written, then convolved": (lambda h: _half_written(h.new_empty(h.shape), h),
                                               "module Conv2d at 'out'"),
    "empty(shape) half written, its other half read": (
        lambda h: _half_written(torch.empty(h.shape, dtype=h.dtype), h)[:, 1:3].repeat(1, 2, 1, 1),
        "tensor method .repeat() at 'repeat'"),
    "empty_like written from itself": (_written_from_itself, "function _operator.add at 'add'"),
}


@pytest.mark.parametrize("kind", list(GARBAGE))
def test_reading_elements_of_an_empty_tensor_never_written_is_refused_in_one_line(kind):
    """torch.empty, empty_like and new_empty give memory without values: a model that reads elements of it before
    writing them reads garbage, refused in one line naming the call that reads and the allocation."""
    op, reader = GARBAGE[kind]
    net = _Around(lambda m, h: op(h)).double().eval()
    with pytest.raises(UnsupportedOperation, match=rf"^{re.escape(reader)} reads elements of the tensor allocated at "
                                                   r"'(empty_like|new_empty|empty)' that were never written") as err:
        interpret(net, torch.rand(1, 3, 6, 6, dtype=torch.float64))
    assert "\n" not in str(err.value)


def test_native_dropout_is_the_identity_and_a_mask_of_ones_in_eval_and_refused_with_train_none():
    """torch.native_dropout(x, p, train) returns (output, mask): with train=False the input and a mask of ones, which
    a net may use (F is the Jacobian, F x0 + r = f(x0)); with train=None it drops values as in training: refused."""
    torch.manual_seed(0)
    net = _Around(lambda m, h: torch.native_dropout(h.relu(), 0.5, False)[0] * torch.native_dropout(h, 0.5, False)[1])
    net, x0 = net.double().eval(), torch.rand(1, 3, 6, 6, dtype=torch.float64) - 0.5
    relu = _same_layers(net, lambda m, h: h.relu())
    li = interpret(net, x0)
    assert (dense(li, x0) - torch.func.jacrev(relu)(x0).reshape(-1, x0.numel())).abs().max() <= 1e-14
    with torch.no_grad():
        assert (li.forward(x0) + li.residual - relu(x0)).abs().max() <= 1e-14
    assert not torch.equal(torch.native_dropout(torch.ones(64), 0.5, None)[0], torch.ones(64))
    dropping = _same_layers(net, lambda m, h: torch.native_dropout(h, 0.5, None)[0])
    with pytest.raises(UnsupportedOperation, match=r"^function torch.native_dropout at 'native_dropout': it drops "
                                                   r"values at random \(train=None\)") as err:
        interpret(dropping, x0)
    assert "\n" not in str(err.value)


class _SpatialAttention(nn.Module):
    """CBAM's spatial attention: channel mean and channel max (amax), a convolution, a sigmoid gate."""

    def __init__(self):
        super().__init__()
        self.conv, self.mix = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        pooled = torch.cat([y.mean(dim=1, keepdim=True), torch.amax(y, dim=1, keepdim=True)], dim=1)
        return y * torch.sigmoid(self.mix(pooled)) + y.amax(dim=(2, 3), keepdim=True) + torch.amax(y, 1)[:, None]


def test_amax_follows_the_switches_of_x0_and_ties_split_as_autograd_splits_them():
    torch.manual_seed(0)
    model, x0 = _SpatialAttention().double().eval(), torch.rand(1, 3, 5, 6, dtype=torch.float64)
    li = _check_identities(model, x0)
    assert [a["kind"] for a in li.approximations] == ["secant", "frozen-factor"]
    plain = torch.amax  # alone, amax is exact: F is autograd's Jacobian, ties included
    x0 = torch.tensor([[[[1.0, 3.0], [3.0, 2.0]], [[0.5, 0.5], [0.5, 0.5]]]], dtype=torch.float64)
    for dims in (1, (2, 3), -1):
        class Max(nn.Module):
            def forward(self, x):
                return plain(x, dim=dims, keepdim=True)

        li = interpret(Max(), x0)
        jacobian = torch.autograd.functional.jacobian(Max(), x0).reshape(li.output.numel(), x0.numel())
        assert li.jacobian_exact and torch.allclose(dense(li, x0), jacobian, atol=1e-12)
        assert torch.allclose(li.forward(x0) + li.residual, Max()(x0), atol=1e-12)


class _Extrema(nn.Module):
    """conv → one form of max / min → conv, so that switches of mixed signs matter on both sides."""

    FORMS = {
        "torch.max(y, 1)[0]": lambda y: torch.max(y, 1)[0][:, None] + y,
        "y.max(dim=1).values": lambda y: y.max(dim=1).values.unsqueeze(1) * 2 + y,
        "torch.min(y, 1, keepdim=True)": lambda y: torch.min(y, 1, keepdim=True)[0] - y,
        "y.min(-1).values": lambda y: y.min(-1).values[..., None].expand(-1, -1, -1, 6),
        "torch.max(y, dim=2).indices": lambda y: y * (torch.max(y, dim=2, keepdim=True).indices == 1),
        "torch.max(a, b)": lambda y: torch.max(y, y.flip(3)),
        "torch.min(a, other=b)": lambda y: torch.min(y, other=y.roll(1, 1)),
        "y.max(b)": lambda y: y.max(y.flip(2)),
        "torch.maximum": lambda y: torch.maximum(y, y.flip(3)),
        "torch.minimum(constant, y)": lambda y: torch.minimum(torch.linspace(-0.3, 0.3, 6, dtype=y.dtype), y),
        "amin": lambda y: torch.amin(y, 1, keepdim=True) + y.amin(dim=(2, 3), keepdim=True),
    }

    def __init__(self, form: str):
        super().__init__()
        self.a, self.b, self.form = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 2, 1), self.FORMS[form]

    def forward(self, x):
        return self.b(self.form(self.a(x)))


@pytest.mark.parametrize("form", list(_Extrema.FORMS))
def test_max_and_min_in_every_form_follow_the_switches_of_x0(form):
    """torch.max / torch.min along a dim (values, indices), of two tensors, maximum / minimum, amin: F is the
    float64 Jacobian (columns and rows), F x0 + r = f(x0) and Fᵀ is the adjoint."""
    torch.manual_seed(0)
    model, x0 = randomize(_Extrema(form)).double(), torch.randn(1, 3, 5, 6, dtype=torch.float64)
    li = _check_identities(model, x0)
    jacobian = torch.func.jacrev(model)(x0).reshape(li.output.numel(), x0.numel())
    rows = li.transpose(torch.eye(li.output.numel(), dtype=torch.float64).reshape(-1, *li.output.shape[1:]))
    assert li.jacobian_exact and jacobian.abs().max() > 0
    assert (dense(li, x0) - jacobian).abs().max() <= 1e-12 * jacobian.abs().max()
    assert (rows.reshape(li.output.numel(), -1) - jacobian).abs().max() <= 1e-12 * jacobian.abs().max()
    other = interpret(model, -x0)  # a control: the switches of another input give another F
    assert (dense(other, x0) - jacobian).abs().max() > 1e-3 * jacobian.abs().max()


@pytest.mark.parametrize("op", ["max-dim", "min-dim", "max-pair", "min-pair"])
def test_max_and_min_ties_follow_autograd(op):
    """Ties: along a dim, all of the gradient goes to the index torch returns (not split as amax splits it);
    of two tensors, half to each (as torch.maximum's autograd splits it)."""
    fn = {"max-dim": lambda x: torch.max(x, 1, keepdim=True)[0] + x.max(-1).values[..., None],
          "min-dim": lambda x: torch.min(x, 2, keepdim=True).values,
          "max-pair": lambda x: torch.max(x, x.flip(3)), "min-pair": lambda x: torch.min(x, x.flip(1))}[op]

    class Net(nn.Module):
        def forward(self, x):
            return fn(x)

    x0 = torch.tensor([[[[1.0, 3.0], [3.0, 2.0]], [[3.0, 0.5], [0.5, 3.0]]]], dtype=torch.float64)
    li = interpret(Net(), x0)
    jacobian = torch.autograd.functional.jacobian(Net(), x0).reshape(li.output.numel(), x0.numel())
    assert li.jacobian_exact and torch.equal(dense(li, x0), jacobian)
    assert torch.allclose(li.forward(x0) + li.residual, Net()(x0), atol=1e-12)


@pytest.mark.parametrize("fn,what", [
    (lambda y: y - torch.max(y), "gives a scalar of the whole batch"),
    (lambda y: y - y.min(), "gives a scalar of the whole batch"),
    (lambda y: y - torch.amax(y), "gives a scalar of the whole batch"),
    (lambda y: y - torch.max(y, 0, keepdim=True)[0], "reduces over the batch dimension"),
    (lambda y: y - y.amin(dim=(0, 1), keepdim=True), "reduces over the batch dimension"),
], ids=["torch.max(y)", "y.min()", "torch.amax(y)", "torch.max(y, 0)", "y.amin(dim=(0, 1))"])
def test_max_and_min_over_the_batch_are_refused_naming_a_fix(fn, what):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            return fn(self.conv(x))

    with pytest.raises(UnsupportedOperation, match=rf"at '\w+': it {what}; keep the batch dimension "
                                                   r"\(e\.g\. dim=\(1, 2, 3\), keepdim=True\)") as err:
        interpret(Net(), torch.rand(1, 3, 4, 4))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("layer", ["LazyLinear", "LazyConv2d"])
def test_lazy_layers_are_refused_until_initialised_and_then_interpreted(layer):
    """An uninitialised lazy layer is refused in one line naming it (interpret makes up no weights and leaves the
    model as it is); once run on an input, or loaded from a state dict, it is interpreted exactly."""
    def make():
        lazy = nn.LazyLinear(5) if layer == "LazyLinear" else nn.LazyConv2d(4, 3)
        return nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU(), nn.Flatten(), lazy) if layer == "LazyLinear" \
            else nn.Sequential(lazy, nn.ReLU())

    torch.manual_seed(0)
    x0 = torch.rand(1, 3, 5, 5)
    model = make()
    with pytest.raises(UnsupportedOperation, match=rf"^module {layer} at '\d' is a lazy layer whose parameters do "
                                                   r"not exist yet: run the model once on an input") as err:
        interpret(model, x0)
    assert "\n" not in str(err.value)
    assert type(model[-1 if layer == "LazyLinear" else 0]).__name__ == layer  # not materialised by interpret
    model(x0)
    _check_identities(model, x0)
    loaded = make()
    loaded.load_state_dict(model.state_dict())  # initialised, still of the lazy class (in_channels 0 for a conv)
    assert torch.equal(interpret(loaded, x0).forward(x0), interpret(model, x0).forward(x0))


class _InPlace(nn.Module):
    """conv → `change` (a call that changes the conv's output in place) → conv of what `change` returns."""

    def __init__(self, change):
        super().__init__()
        self.a, self.b, self.change = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 2, 1), change
        self.relu, self.lrelu = nn.ReLU(inplace=True), nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x):
        return self.b(self.change(self, self.a(x)))


def _mul_discarded(m, h):
    h.mul_(2.0)  # the result is dropped: h itself is doubled
    return h


def _clamp_discarded(m, h):
    h.clamp_(-0.1, 0.1)
    return h


def _chunk_changed(parts):
    a, b = parts[0], parts[1]
    a.relu_()  # b shares a's storage, not its elements
    return torch.cat([a, b], 1)


F_ = nn.functional
#: in-place forms -> (the change, the same function written out of place)
IN_PLACE = {
    "x.mul_ (result dropped)": (_mul_discarded, lambda m, h: 2 * h),
    "x.clamp_ (result dropped)": (_clamp_discarded, lambda m, h: h.clamp(-0.1, 0.1)),
    "ReLU(inplace=True), its input used again": (lambda m, h: m.relu(h) + h, lambda m, h: 2 * torch.relu(h)),
    "LeakyReLU(inplace=True) then x.add_": (lambda m, h: m.lrelu(h).add_(h), lambda m, h: 2 * F_.leaky_relu(h, 0.2)),
    "F.leaky_relu(x, 0.2, True), its input used again": (lambda m, h: 3 * F_.leaky_relu(h, 0.2, True) - h,
                                                         lambda m, h: 2 * F_.leaky_relu(h, 0.2)),
    "F.relu_, its input used again": (lambda m, h: F_.relu_(h) * 0.5 + h, lambda m, h: 1.5 * torch.relu(h)),
    "a chunk changed in place": (lambda m, h: _chunk_changed(h.chunk(2, 1)),
                                 lambda m, h: torch.cat([torch.relu(h[:, :2]), h[:, 2:]], 1)),
}


@pytest.mark.parametrize("kind", list(IN_PLACE))
def test_later_uses_of_a_tensor_changed_in_place_see_the_change(kind):
    """The model reads the changed tensor wherever it is used after an in-place call (also when the call's own
    result is dropped); linear passes run every call out of place, so the graph's later uses read the call's
    result: F x0 + r = f(x0), and F is the Jacobian (that of the same function written out of place, as autograd
    refuses some in-place forms)."""
    torch.manual_seed(0)
    change, reference = IN_PLACE[kind]
    model, x0 = _InPlace(change).double().eval(), torch.randn(1, 3, 5, 5, dtype=torch.float64)
    same = _InPlace(reference).double().eval()
    same.load_state_dict(model.state_dict())
    li = interpret(model, x0)
    with torch.no_grad():
        y = model(x0.clone())
    assert (y - same(x0)).abs().max() <= 1e-14 * y.abs().max()
    assert (li.forward(x0) + li.residual - y).abs().max() <= 1e-12 * y.abs().max()
    jacobian = torch.func.jacrev(same)(x0).reshape(y.numel(), x0.numel())
    assert (dense(li, x0) - jacobian).abs().max() <= 1e-12 * jacobian.abs().max()


def test_an_in_place_change_through_shared_memory_is_refused_in_one_line():
    """`h[:, :2].relu_()` changes h, which linear passes (out of place) would not: refused, naming the call."""
    model = _InPlace(lambda m, h: (h[:, :2].relu_(), h)[1])
    with pytest.raises(UnsupportedOperation, match=r"^tensor method \.relu_\(\) at 'relu_' changes in place a tensor "
                                                   r"that shares memory with 'a', which is used afterwards") as err:
        interpret(model, torch.rand(1, 3, 5, 5))
    assert "\n" not in str(err.value)


def _view_then_change(h):
    v = h[:, 1:3]  # recorded before the change, used after it
    nn.functional.relu_(h)
    return v + 0


SHARED = {  # (the change, the node named as the other user of the memory)
    "a slice changed, the whole used after": (lambda h: (h[:, :2].relu_(), h)[1], "a"),
    "the whole changed, a slice taken before used after": (_view_then_change, "getitem"),
    "interleaved slices": (lambda h: (lambda e, o: (e.relu_(), torch.cat([e, o], 1))[1])(h[:, ::2], h[:, 1::2]),
                           "getitem_1"),
    "a reshaped view changed, the whole used after": (
        lambda h: (lambda v: (v.mul_(3), h + v.reshape(h.shape))[1])(h.view(1, 4, -1)), "a"),
}


@pytest.mark.parametrize("kind", list(SHARED))
def test_in_place_changes_through_shared_memory_are_refused_naming_the_other_user(kind):
    """Whatever the order in which a view and the tensor it shares memory with were recorded, a change in place of
    one while the other is used afterwards is refused, naming the first such value (in graph order)."""
    change, other = SHARED[kind]
    with pytest.raises(UnsupportedOperation, match=rf"changes in place a tensor that shares memory with '{other}', "
                                                   r"which is used afterwards"):
        interpret(_InPlace(lambda m, h: change(h)), torch.rand(1, 3, 5, 5))


def test_in_place_changes_of_memory_no_longer_used_are_accepted():
    """A view whose last use came before the change, or a disjoint chunk of the same storage, does not see the
    change: accepted, and F x0 + r = f(x0)."""
    def change(m, h):
        first = h[:, :2] * 1.0  # last use of the view h[:, :2] before the change
        a, b = h[:, :2], h[:, 2:]
        a.mul_(2.0)  # b shares the storage, not the elements; h itself is not used after this
        return torch.cat([first, a, b], 1)

    torch.manual_seed(0)
    model, x0 = _InPlace(change).double().eval(), torch.randn(1, 3, 5, 5, dtype=torch.float64)
    model.b = nn.Conv2d(6, 2, 1).double()
    li = interpret(model, x0)
    with torch.no_grad():
        y = model(x0.clone())
    assert (li.forward(x0) + li.residual - y).abs().max() <= 1e-12 * y.abs().max()


@pytest.mark.parametrize("kind", ["aliased +=", "forward hook"])
def test_a_model_whose_output_is_not_its_traced_graphs_is_refused(kind):
    """torch.fx records `g += 1` as `g = g + 1`, so `h` keeps its old value in the graph where the model's `h` (the
    same tensor as g) changed; a forward hook does not run in the graph. Both would give F of another function."""
    class Aliased(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)

        def forward(self, x):
            h = self.conv(x)
            g = h
            g += 1.0
            return g + h

    model = Aliased()
    if kind == "forward hook":
        model = nn.Sequential(nn.Conv2d(3, 3, 1))
        model.register_forward_hook(lambda module, args, out: 2 * out)
    with pytest.raises(UnsupportedOperation, match=r"output at x0 differs from that of its torch\.fx graph") as err:
        interpret(model, torch.rand(1, 3, 4, 4))
    assert "\n" not in str(err.value)


class _SpaceToDepth(nn.Module):
    """The input goes through a PixelUnshuffle, or is concatenated with a noise map (FFDNet), before the first
    convolution, whose input channels are then not the image's; the tail conv is registered first."""

    def __init__(self, noise_map: bool):
        super().__init__()
        self.tail = nn.Conv2d(4, 3, 3, padding=1)
        self.head = nn.Conv2d(4 if noise_map else 12, 4 if noise_map else 16, 3, padding=1)
        self.noise_map = noise_map

    def forward(self, x):
        if self.noise_map:
            return self.tail(torch.relu(self.head(torch.cat([x, torch.full_like(x[:, :1], 0.1)], 1))))
        return self.tail(nn.functional.pixel_shuffle(torch.relu(self.head(nn.functional.pixel_unshuffle(x, 2))), 2))


@pytest.mark.parametrize("noise_map", [False, True])
def test_input_channels_are_checked_against_the_convolution_that_reads_the_input(noise_map):
    torch.manual_seed(0)
    x0 = torch.rand(1, 3, 6, 6, dtype=torch.float64)
    _check_identities(_SpaceToDepth(noise_map).double().eval(), x0)
    with pytest.raises(InputError, match="expects 3 input channels, x0 has 1"):
        interpret(nn.Sequential(nn.Conv2d(3, 4, 3), nn.PixelShuffle(2)), torch.rand(1, 1, 6, 6))


def test_an_x0_laid_out_channels_last_gives_the_same_interpreter():
    """An image from numpy, (H, W, C) permuted to (1, C, H, W), is laid out channels-last; a classifier that
    flattens its features with `.view` (which needs them contiguous) still has its residual and identities."""
    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8 * 36, 4)

        def forward(self, x):
            h = torch.relu(self.conv(x))
            return self.fc(h.view(h.size(0), -1))

    torch.manual_seed(0)
    model = Classifier().double().eval()
    x0 = torch.rand(6, 6, 3, dtype=torch.float64).permute(2, 0, 1)[None]
    li = interpret(model, x0)
    with torch.no_grad():
        y = model(x0.contiguous())
    assert (li.forward(x0.contiguous()) + li.residual - y).abs().max() <= 1e-12 * y.abs().max()
    assert torch.equal(dense(li, x0), dense(interpret(model, x0.contiguous()), x0))


class _OddUnet(nn.Module):
    """A U-Net level for any size: pooling with ceil_mode, then upsampling back to the skip's size (whose scale,
    13/24 at 24 pixels, is another one in a window)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.c = nn.Conv2d(8, 2, 3, padding=1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        d = torch.relu(self.b(nn.functional.max_pool2d(h, 3, 2, 1, ceil_mode=True)))
        return self.c(torch.cat([h, nn.functional.interpolate(d, size=h.shape[2:])], 1))


def test_windows_of_an_upsampling_to_another_maps_size_equal_full_image_columns():
    """Every 4×4 tile's window gives the whole image's columns, or is the whole image: the check that a window
    commutes with the network covers the tile's far corner, where the two sampling grids drift apart."""
    torch.manual_seed(0)
    model, x0 = _OddUnet().double().eval(), torch.rand(1, 3, 24, 24, dtype=torch.float64)
    li = interpret(model, x0)
    assert li.receptive_radius is not None
    for top in range(0, 24, 4):
        for left in range(0, 24, 4):
            win = li.window((top, left, 4, 4))
            v = torch.zeros(48, 3, 24, 24, dtype=torch.float64)
            for k, (c, dy, dx) in enumerate((c, dy, dx) for c in range(3) for dy in range(4) for dx in range(4)):
                v[k, c, top + dy, left + dx] = 1.0
            full = li.forward(v)
            iy, ix, ih, iw = win.in_box
            oy, ox, oh, ow = win.out_box
            part = win.forward(v[:, :, iy:iy + ih, ix:ix + iw])
            assert (part - full[:, :, oy:oy + oh, ox:ox + ow]).abs().max() <= 1e-12 * full.abs().max(), (top, left)
            full[:, :, oy:oy + oh, ox:ox + ow] = 0
            assert full.abs().max() == 0


def test_wrong_types_and_precisions_are_refused_in_one_line():
    """An ndarray for x0, x0 and parameters in two precisions, batches in another dtype than x0's: one line each
    that says what to give (they were torch's errors from deep inside a pass, or 'got float32' for an ndarray)."""
    model, x0 = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU()), torch.rand(1, 3, 8, 8)
    li = interpret(model, x0)
    cases = [
        (lambda: interpret(model, x0.numpy()), "x0 must be a torch tensor (1, C, H, W), got ndarray "
                                               "(torch.from_numpy(x0))"),
        (lambda: interpret(model, x0.double()), "x0 is torch.float64 and the model's parameters torch.float32: give "
                                                "both one precision (x0.to(dtype) or model.to(dtype))"),
        (lambda: li.forward(torch.rand(2, 3, 8, 8, dtype=torch.float64)),
         "forward expects torch.float32 on cpu (those of x0), got torch.float64 on cpu: .to(li.x0)"),
        (lambda: li.transpose(torch.rand(2, 3, 8, 8, dtype=torch.float64)),
         "transpose expects torch.float32 on cpu (those of x0), got torch.float64 on cpu: .to(li.x0)"),
    ]
    for call, message in cases:
        with pytest.raises(InputError) as err:
            call()
        assert str(err.value) == message
