"""Convolutions on the support box of their input (pipeline.interpreter.sparse) equal the whole convolution."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.interpreter import sparse
from pipeline.interpreter.sparse import conv2d_on_support


def _sparse_input(shape, box, seed=0, channels_last=False):
    """Random values inside box = (top, left, h, w), exact zeros elsewhere."""
    g = torch.Generator().manual_seed(seed)
    v = torch.zeros(shape)
    top, left, h, w = box
    v[..., top:top + h, left:left + w] = torch.randn(shape[0], shape[1], h, w, generator=g)
    return v.contiguous(memory_format=torch.channels_last) if channels_last else v


CASES = [  # (input shape, weight shape, stride, padding, dilation, groups, box)
    ((3, 8, 40, 36), (16, 8, 3, 3), (1, 1), (1, 1), (1, 1), 1, (17, 15, 2, 3)),      # interior
    ((3, 8, 40, 36), (16, 8, 3, 3), (1, 1), (1, 1), (1, 1), 1, (0, 0, 3, 2)),        # touches top-left
    ((3, 8, 40, 36), (16, 8, 3, 3), (1, 1), (1, 1), (1, 1), 1, (37, 33, 3, 3)),      # touches bottom-right
    ((2, 8, 41, 39), (16, 8, 5, 3), (2, 3), (2, 1), (1, 1), 1, (10, 20, 4, 5)),      # strides, odd sizes
    ((2, 8, 41, 39), (16, 8, 3, 3), (1, 1), (2, 2), (2, 2), 1, (0, 30, 5, 9)),       # dilation at an edge
    ((2, 8, 33, 33), (16, 2, 3, 3), (1, 1), (0, 0), (1, 1), 4, (12, 12, 3, 3)),      # groups, no padding
    ((2, 8, 33, 33), (16, 8, 4, 4), (2, 2), (3, 0), (1, 1), 1, (31, 0, 2, 2)),       # even kernel, asymmetric
    ((1, 8, 30, 30), (16, 8, 3, 3), (1, 1), (1, 1), (1, 1), 1, (4, 5, 1, 1)),        # one pixel
]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("case", CASES)
def test_equals_whole_convolution(case, channels_last):
    shape, wshape, stride, padding, dilation, groups, box = case
    v = _sparse_input(shape, box, channels_last=channels_last)
    w = torch.randn(wshape, generator=torch.Generator().manual_seed(1))
    want = F.conv2d(v, w, None, stride, padding, dilation, groups)
    got = conv2d_on_support(v, w, stride, padding, dilation, groups)
    assert got.shape == want.shape
    assert got.is_contiguous(memory_format=torch.channels_last) == (channels_last and not got.is_contiguous())
    scale = float(want.abs().max())
    assert scale > 0
    assert float((got - want).abs().max()) <= 1e-6 * scale
    # what the whole convolution leaves at exactly zero is exactly zero here too (no stray values at the box edges)
    assert torch.equal(got == 0, want == 0)


def test_the_box_is_really_cropped(monkeypatch):
    """The crop happens: the convolution sees a piece of the input, not the whole map (else the speed-up is lost)."""
    seen = []
    real = F.conv2d

    def spy(x, *args):
        seen.append(tuple(x.shape[-2:]))
        return real(x, *args)

    monkeypatch.setattr(sparse.F, "conv2d", spy)
    v = _sparse_input((2, 8, 40, 40), (20, 20, 2, 2))
    w = torch.randn(32, 8, 3, 3)
    conv2d_on_support(v, w, (1, 1), (1, 1), (1, 1), 1)
    assert seen == [(10, 10)]  # outputs 19..22, widened to 16..23 (SPAN_STEP 8), read input rows 15..24


def test_dense_and_cheap_convolutions_go_whole(monkeypatch):
    seen = []
    real = F.conv2d
    monkeypatch.setattr(sparse.F, "conv2d", lambda x, *a: seen.append(tuple(x.shape[-2:])) or real(x, *a))
    dense = torch.randn(1, 8, 20, 20)
    conv2d_on_support(dense, torch.randn(32, 8, 3, 3), (1, 1), (1, 1), (1, 1), 1)
    cheap = _sparse_input((1, 8, 20, 20), (5, 5, 1, 1))  # 3 outputs × 3 × 3 < MIN_WORK per input value
    assert 3 * 9 < sparse.MIN_WORK
    conv2d_on_support(cheap, torch.randn(3, 8, 3, 3), (1, 1), (1, 1), (1, 1), 1)
    assert seen == [(20, 20), (20, 20)]


def test_zero_and_non_finite_inputs():
    w = torch.randn(16, 4, 3, 3)
    zero = conv2d_on_support(torch.zeros(2, 4, 10, 10), w, (1, 1), (1, 1), (1, 1), 1)
    assert zero.shape == (2, 16, 10, 10) and not zero.any()
    v = torch.zeros(1, 4, 10, 10)
    v[0, 1, 6, 6] = math.nan
    got = conv2d_on_support(v, w, (1, 1), (1, 1), (1, 1), 1)
    want = F.conv2d(v, w, None, 1, 1)
    assert torch.equal(got.isnan(), want.isnan()) and got.isnan().sum() == 16 * 9


def test_interpreter_columns_through_cropped_convolutions_equal_the_jacobian(monkeypatch):
    """edsr-small-x4 (piecewise linear: F is the Jacobian) on a 24×24 input: columns computed by the engine, whose
    convolutions now run on the support of the impulses, equal jvp's of the model, and the crops did happen."""
    from pipeline.compute import tile_columns
    from pipeline.interpreter import interpret
    from pipeline.models import build

    crops = []
    real = F.conv2d

    def spy(x, *args):
        crops.append(x.shape[-1])
        return real(x, *args)

    model = build("edsr-small-x4", "random").eval()
    x0 = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(3)) * 255
    li = interpret(model, x0)
    monkeypatch.setattr(sparse.F, "conv2d", spy)
    box = (10, 6, 2, 2)
    (top, left, h, w), block = tile_columns(li, (3, 24, 24), box, batch=16)
    assert any(side < 24 for side in crops)  # some convolutions saw a piece of their map
    for c, y, x in [(0, 10, 6), (2, 11, 7), (1, 10, 7)]:
        e = torch.zeros_like(x0)
        e[0, c, y, x] = 1
        _, jvp = torch.func.jvp(model, (x0,), (e,))
        col = block[:, :, :, c, y - box[0], x - box[1]]
        want = jvp[0].detach().numpy()
        assert np.abs(want).sum() == pytest.approx(np.abs(want[:, top:top + h, left:left + w]).sum(), rel=1e-6)
        assert np.abs(col - want[:, top:top + h, left:left + w]).max() <= 1e-4 * np.abs(want).max()
