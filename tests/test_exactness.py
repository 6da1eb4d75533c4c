"""Honest approximations: F equals the float64 Jacobian (torch.func.jacrev) for every piecewise-linear rule kind,
`jacobian_exact` / `approximations` say when it does not, and named-tuple results are refused with the reason."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.interpreter import UnsupportedOperation, interpret
from pipeline.models import build
from pipeline.models.cyclegan import ResnetGenerator


class Sandwich(nn.Module):
    """conv → op → conv, so that the op sees mixed signs and its switches matter."""

    def __init__(self, op, c_mid: int = 4, c_out: int = 2):
        super().__init__()
        self.a = nn.Conv2d(2, c_mid, 3, padding=1)
        self.op = op
        self.b = nn.LazyConv2d(c_out, 3, padding=1)

    def forward(self, x):
        return self.b(self.op(self.a(x)))


class Fn(nn.Module):
    """A functional or method call as a module (traced into, so the call itself is the graph node)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class _Unpooled(nn.Module):
    """A max pool that returns its indices, and the values put back where they came from (SegNet), or only the
    values kept (indexing the pair)."""

    def __init__(self, functional: bool = False, unpool: bool = True):
        super().__init__()
        self.pool, self.unpool = nn.MaxPool2d(2, return_indices=True), nn.MaxUnpool2d(2)
        self.functional, self.put_back = functional, unpool

    def forward(self, x):
        pair = F.max_pool2d(x, 2, return_indices=True) if self.functional else self.pool(x)
        if not self.put_back:
            return pair[0]
        return F.max_unpool2d(pair[0], pair[1], 2) if self.functional else self.unpool(pair[0], pair[1])


#: every piecewise-linear rule kind, as modules, functions and tensor methods
PIECEWISE_LINEAR = {
    "ReLU": nn.ReLU(), "ReLU-inplace": nn.ReLU(inplace=True), "F.relu": Fn(F.relu), "x.relu": Fn(lambda x: x.relu()),
    "LeakyReLU": nn.LeakyReLU(0.1), "F.leaky_relu": Fn(lambda x: F.leaky_relu(x, 0.2)),
    "PReLU": nn.PReLU(4, init=0.3), "ReLU6": nn.ReLU6(), "F.relu6": Fn(F.relu6),
    "Hardtanh": nn.Hardtanh(-0.3, 0.4), "F.hardtanh": Fn(lambda x: F.hardtanh(x, -0.2, 0.1)),
    "clamp": Fn(lambda x: torch.clamp(x, -0.2, 0.3)), "x.clamp": Fn(lambda x: x.clamp(min=-0.1)),
    "abs": Fn(torch.abs), "x.abs": Fn(lambda x: x.abs()),
    "MaxPool2d": nn.MaxPool2d(2), "MaxPool2d-stride1-pad": nn.MaxPool2d(3, stride=1, padding=1),
    "F.max_pool2d": Fn(lambda x: F.max_pool2d(x, 2)), "AdaptiveMaxPool2d": nn.AdaptiveMaxPool2d((3, 2)),
    "AvgPool2d": nn.AvgPool2d(2), "AdaptiveAvgPool2d": nn.AdaptiveAvgPool2d(3),
    "Upsample-nearest": nn.Upsample(scale_factor=2), "Upsample-bilinear": nn.Upsample(scale_factor=2, mode="bilinear"),
    "interpolate-bicubic": Fn(lambda x: F.interpolate(x, scale_factor=2, mode="bicubic")),
    "ZeroPad2d": nn.ZeroPad2d((1, 2, 0, 1)), "ReflectionPad2d": nn.ReflectionPad2d(2),
    "ReplicationPad2d": nn.ReplicationPad2d(1), "CircularPad2d": nn.CircularPad2d(1),
    "ConstantPad2d": nn.ConstantPad2d(1, 0.7), "F.pad-reflect": Fn(lambda x: F.pad(x, (1, 1, 2, 0), mode="reflect")),
    "PixelShuffle": nn.PixelShuffle(2), "PixelUnshuffle": nn.PixelUnshuffle(2),
    "F.pixel_shuffle": Fn(lambda x: F.pixel_shuffle(x, 2)),
    "MaxPool2d-indices+MaxUnpool2d": _Unpooled(), "F.max_pool2d-indices+F.max_unpool2d": _Unpooled(True),
    "MaxPool2d-indices, values only": _Unpooled(unpool=False),
}


@pytest.mark.parametrize("kind", list(PIECEWISE_LINEAR))
def test_F_is_the_float64_jacobian_of_every_piecewise_linear_rule(kind):
    torch.manual_seed(0)
    model = Sandwich(PIECEWISE_LINEAR[kind])
    x0 = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    model(x0.float())  # materialise the lazy conv
    model = model.double().eval()
    li = interpret(model, x0)
    assert li.jacobian_exact and li.approximations == []
    n = x0.numel()
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *x0.shape[1:])
    dense = li.forward(eye).reshape(n, -1).T                          # columns
    rows = li.transpose(torch.eye(li.output.numel(), dtype=torch.float64).reshape(-1, *li.output.shape[1:]))
    jac = torch.func.jacrev(model)(x0).reshape(li.output.numel(), n)
    assert jac.abs().max() > 0
    assert (dense - jac).abs().max() <= 1e-10 * jac.abs().max()
    assert (rows.reshape(-1, n) - jac).abs().max() <= 1e-10 * jac.abs().max()
    # a control: a wrong mask at one unit must show (the identity is not vacuous)
    if kind in ("ReLU", "LeakyReLU", "abs"):
        other = interpret(model, x0 + 0.5 * torch.randn_like(x0))
        assert (other.forward(eye).reshape(n, -1).T - jac).abs().max() > 1e-3 * jac.abs().max()


def test_jacobian_exact_for_edsr_and_classifiers_but_not_cyclegan():
    torch.manual_seed(0)
    cases = {"edsr-small-x4": (build("edsr-small-x4", "random"), 255 * torch.rand(1, 3, 8, 8)),
             "digits-vgg": (build("digits-vgg", "random"), torch.rand(1, 1, 32, 32)),
             "digits-vgg-bn": (build("digits-vgg-bn", "random"), torch.rand(1, 1, 32, 32))}
    import torchvision

    cases["resnet18"] = (torchvision.models.resnet18().eval(), torch.rand(1, 3, 32, 32))
    cases["vgg11_bn"] = (torchvision.models.vgg11_bn().eval(), torch.rand(1, 3, 32, 32))
    for name, (model, x0) in cases.items():
        li = interpret(model, x0)
        assert li.jacobian_exact and li.approximations == [], name
    li = interpret(ResnetGenerator(3, 3, 8, 2).eval(), 2 * torch.rand(1, 3, 16, 16) - 1)
    assert not li.jacobian_exact
    kinds = {(a["kind"], a["op"]) for a in li.approximations}
    assert ("frozen-statistics", "InstanceNorm2d") in kinds and ("secant", "Tanh") in kinds
    norms = [a for a in li.approximations if a["op"] == "InstanceNorm2d"]
    assert len(norms) == sum(isinstance(m, nn.InstanceNorm2d) for m in li.gm.modules())
    assert all(a["where"] for a in li.approximations)
    li = interpret(build("i2i-label", "random"), 2 * torch.rand(1, 3, 16, 16) - 1)
    assert not li.jacobian_exact


class _Gated(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)  # two input-dependent factors: one is frozen


class _Divided(nn.Module):
    def forward(self, x):
        return x / (1 + x.abs().sum(1, keepdim=True))


class _TrainBatchNorm(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(2)

    def forward(self, x):
        return F.batch_norm(x, None, None, self.bn.weight, self.bn.bias, training=True)


@pytest.mark.parametrize("model,kinds", [
    (_Gated(), {"secant", "frozen-factor"}), (_Divided(), {"frozen-factor"}),
    (nn.Sequential(nn.Conv2d(2, 2, 1), nn.GroupNorm(1, 2), nn.GELU()), {"frozen-statistics", "secant"}),
    (nn.Sequential(nn.LayerNorm([2, 4, 4]), nn.SiLU()), {"frozen-statistics", "secant"}),
    (_TrainBatchNorm(), {"frozen-statistics"}),
], ids=["gate", "division", "groupnorm-gelu", "layernorm-silu", "batchnorm-batch-stats"])
def test_approximations_are_named_and_F_differs_from_the_jacobian(model, kinds):
    x0 = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    model = model.double().eval()
    li = interpret(model, x0)
    assert not li.jacobian_exact and {a["kind"] for a in li.approximations} == kinds
    n = x0.numel()
    dense = li.forward(torch.eye(n, dtype=torch.float64).reshape(n, *x0.shape[1:])).reshape(n, -1).T
    jac = torch.func.jacrev(model)(x0).reshape(-1, n)
    assert (dense - jac).abs().max() > 1e-3 * jac.abs().max()  # really not the Jacobian
    assert (li.forward(x0) + li.residual - model(x0)).abs().max() <= 1e-10  # but exact at x0


def test_batch_norm_with_running_statistics_is_exact():
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU()).eval()
    li = interpret(net, torch.rand(1, 2, 6, 6))
    assert li.jacobian_exact


NAMED_TUPLES = {
    "torch.sort(x).values": (lambda y: torch.sort(y, dim=1).values, "sort"),
    "x.sort().values": (lambda y: y.sort(dim=1).values, "sort"),
    "torch.topk": (lambda y: torch.topk(y, 2, dim=1).values, "topk"),
    "x.median(dim=1).values": (lambda y: y.median(dim=1).values, "median"),
    "torch.mode": (lambda y: torch.mode(y, 1).values, "mode"),
    "torch.kthvalue": (lambda y: torch.kthvalue(y, 2, 1).values, "kthvalue"),
    "torch.cummax(x, 1)[0]": (lambda y: torch.cummax(y, 1)[0], "cummax"),
}  # torch.max / torch.min along a dim have a rule (tests/test_interpreter.py)


@pytest.mark.parametrize("case", list(NAMED_TUPLES))
def test_named_tuple_results_are_refused_with_the_op_and_the_reason(case):
    fn, op = NAMED_TUPLES[case]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return fn(self.conv(x))

    with pytest.raises(UnsupportedOperation) as err:
        interpret(Net(), torch.rand(1, 3, 6, 6))
    message = str(err.value)
    assert "\n" not in message and f"{op}" in message and "values, indices" in message
    assert "_VariableFunctionsClass" not in message and "must be one tensor" not in message


def test_argmax_indices_alone_are_frozen_switches():
    class Net(nn.Module):
        def forward(self, x):
            idx = x.argmax(dim=1, keepdim=True)  # indices only: frozen at x0, exact almost everywhere
            return x * (idx == 0)

    li = interpret(Net(), torch.randn(1, 3, 4, 4))
    assert li.jacobian_exact
