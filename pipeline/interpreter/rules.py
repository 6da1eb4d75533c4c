"""The rule table: one linear interpreter per kind of operation.

A rule says, for one operation kind, how to

- `record(b)`   run it at x0 and keep what its linear interpreter needs -> (output, state, bias);
- `linear(b, s)` apply the linear part (biases and constant offsets dropped) to perturbations;
- `transpose(b, s, u)` apply the exact adjoint: {input node: cotangent};
- `crop(s, crop)` restrict its state to a spatial window (see `window.py`);
- `support(b, s)` map 0/1 indicators to a tensor that is non-zero wherever they can reach, with every
  mask, gate and switch of x0 opened (the receptive-radius pass of `window.py`);
- `approximation(s)` say whether the interpreter is the operation's Jacobian at x0 (None) or an
  approximation, and of which kind: "secant" (a smooth unit), "frozen-statistics" (a normalisation's
  statistics, or a softmax's sum of exponentials, frozen at x0) or "frozen-factor" (a product of two
  input-dependent factors, one frozen).
- `refuse(b)` say why a call cannot be interpreted at all (None when it can): an operation that samples at
  random (`Random`; `EvalOnly` in training), whose sample at x0 is not the model's at its next call;
- `writes(b)` say which elements of its first argument a call overwrites (an item assignment `x[i] = v`), if any.

A rule may also mark an operation `shape_only` (`Constant`: zeros_like, new_full, fill_, empty_like...): its result
is computed from shapes and constants, not from values, and is recomputed in every pass (a *meta* value, see
`linear.py`); only its `refuse` and `record` run, at x0.

`bias` is the constant the operation adds at x0 (a conv bias, a norm shift, a unit's offset c, a
constant added to a feature map), as a tensor that broadcasts against the output; the engine
forward-projects it to get the contribution Q_i b̂_i of that source.

The tables at the end map module types, functions and tensor-method names to rules. An operation that is
not in the tables raises `UnsupportedOperation` (see `linear.py`).
"""
from __future__ import annotations

import inspect
import operator
from typing import Any, Callable

import torch
import torch.nn.functional as F
import torchvision.ops
from torch import fx, nn

from .errors import UnsupportedOperation
from .graph import Bound, setitem
from .sparse import conv2d_on_support


# --------------------------------------------------------------------------------------------------------
# helpers


def _zeros_like(t, device):
    """Real zeros shaped like a (possibly meta) tensor, or a tuple of them."""
    if isinstance(t, (tuple, list)):
        return type(t)(_zeros_like(x, device) for x in t)
    return torch.zeros(t.shape, dtype=t.dtype, device=device)


def _vjp(b: Bound, cot) -> dict:
    """Adjoint of a linear call by autograd, at zero primals of this pass's shapes."""
    nodes = b.nodes()
    device = (cot[0] if isinstance(cot, (tuple, list)) else cot).device
    primals = [_zeros_like(b.values[n], device) for n in nodes]

    def fn(*xs):
        return b.call(dict(zip(nodes, xs)))

    _, pull = torch.func.vjp(fn, *primals)
    return dict(zip(nodes, pull(cot)))


def _zero(x):
    """The additive zero of a static argument (tensor or number); other values are left alone."""
    if isinstance(x, torch.Tensor):
        return torch.zeros((), dtype=x.dtype, device=x.device).expand(x.shape) if x.is_floating_point() else x
    if isinstance(x, float) or (isinstance(x, int) and not isinstance(x, bool)):
        return type(x)(0)
    return x


def _jittered(b: Bound) -> dict:
    """The values of a call's linear inputs, each multiplied by seeded random factors in [1, 2)."""
    values = dict(b.values)
    for k, node in enumerate(b.nodes()):
        v = values[node]
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            g = torch.Generator(device=v.device).manual_seed(k)
            values[node] = v * (1 + torch.rand(v.shape, generator=g, dtype=v.dtype, device=v.device))
    return values


def _union(b: Bound) -> torch.Tensor:
    """The sum of an element-wise call's linear input indicators, broadcast like its arguments: the support
    of a sum, a difference or a selection (`where`), whatever the signs and conditions."""
    tensors = []
    torch.fx.node.map_aggregate((b.args, b.kwargs), lambda a: tensors.append(
        b.values[a] if isinstance(a, fx.Node) else a) if isinstance(a, (fx.Node, torch.Tensor)) else a)
    shape = torch.broadcast_shapes(*(t.shape for t in tensors))
    out = None
    for node in b.nodes():
        v = b.values[node].abs()
        out = v if out is None else out + v
    return out.expand(shape) if tuple(out.shape) != tuple(shape) else out


def _ones(x):
    """A static factor opened for the support pass: tensors become ones of their shape, numbers 1."""
    if isinstance(x, torch.Tensor):
        return torch.ones(x.shape, dtype=torch.get_default_dtype() if not x.is_floating_point() else x.dtype,
                          device=x.device)
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return 1
    return x


def _channel_view(t: torch.Tensor | None, ndim: int) -> torch.Tensor | None:
    """A per-channel vector (C,) as a tensor that broadcasts over (N, C, *spatial)."""
    return None if t is None else t.reshape(1, -1, *([1] * (ndim - 2)))


# --------------------------------------------------------------------------------------------------------
# rules


class Rule:
    """Base rule: a purely linear operation (reshapes, pooling by averages, padding, interpolation...)."""

    kind = "linear"
    #: whether calls of the operation may draw random numbers (`refuse` says which do); such calls are graph nodes
    #: even when made on constants (see `graph.trace`)
    random = False
    #: whether `support` opens the static tensor arguments of the operation (masks, gates, offsets), so that
    #: values frozen at x0 there do not restrict where perturbations reach (see `window.py`)
    opens_static = False
    #: whether the operation reads only the shapes, dtypes and devices of its tensor arguments (`Constant`)
    shape_only = False
    #: whether its result holds no values (torch.empty*: memory never written) until calls write them (`writes`)
    uninitialised = False

    def record(self, b: Bound):
        return b(), None, None

    def linear(self, b: Bound, state):
        return b()

    def transpose(self, b: Bound, state, cot) -> dict:
        return _vjp(b, cot)

    def support(self, b: Bound, state):
        """Where 0/1 indicators can reach (non-zero there): the linear part applied to the indicators, each
        scaled by seeded random factors in [1, 2), so that coefficients of both signs (a bicubic kernel's
        lobes, a difference) cannot cancel, except on a set of measure zero."""
        out = self.linear(b.on(_jittered(b)), state)
        if out is None:
            return None
        return tuple(o.abs() for o in out) if isinstance(out, (tuple, list)) else out.abs()

    def approximation(self, state) -> str | None:
        """None: the rule is the operation's Jacobian at x0 (linear and piecewise-linear operations)."""
        return None

    def refuse(self, b: Bound) -> str | None:
        """Why this call cannot be interpreted at all (it samples at random: `Random`, `EvalOnly`), or None. Asked of
        every call of the operation, whether its inputs depend on x or not (then the call is static or computed
        from shapes, and no other method of the rule runs)."""
        return None

    def writes(self, b: Bound) -> Any:
        """The index of the elements of the first argument that the call overwrites (an item assignment's), or None for
        a call that writes none."""
        return None

    def crop(self, state, crop: Callable):
        return state


class Identity(Rule):
    """The identity (nn.Identity; dropout and stochastic depth in eval mode: `EvalOnly`)."""

    kind = "identity"

    def record(self, b):
        return b.input(), None, None

    def linear(self, b, state):
        return b.input()

    def transpose(self, b, state, cot):
        return {b.nodes()[0]: cot}


class Random(Rule):
    """An operation that draws random numbers (torch.rand, randn_like, randint, randperm, bernoulli, normal,
    multinomial, poisson, F.gumbel_softmax, Tensor.normal_, uniform_, bernoulli_, ...): the model draws others at
    every call, so that no interpreter frozen at x0 is the model's. Refused wherever it is called (`refuse`), on
    values that depend on the input or not (noise of a fixed shape, a random permutation of channels)."""

    random = True

    def refuse(self, b):
        return ("it draws random values at every call, which a network frozen at x0 cannot follow: draw them once "
                "(a buffer, or an argument of forward) or leave the call out in eval mode (if self.training: ...)")


class Constant(Rule):
    """A tensor whose values come from an input's shape and constants, not from its values (zeros_like, ones_like,
    full_like, new_zeros, new_full, fill_, zero_, ...): computed again in every pass from that pass's tensors (a meta
    value), it is a constant wherever it is used (an offset of a sum, a static factor of a product)."""

    shape_only = True


class Uninitialised(Constant):
    """A tensor allocated without values (torch.empty, empty_like, new_empty): the model reads garbage from it until it
    writes there. Recording holds it as zeros, and refuses a model that reads elements it has not written (see
    `linear.LinearInterpreter._check_written`); in linear passes every write replaces them."""

    uninitialised = True

    def record(self, b):
        return torch.zeros_like(b()), None, None


class MaskedIdentity(Rule):
    """torch.native_dropout when it drops nothing (train=False, or p = 0): (the input, its mask of ones, bool)."""

    def record(self, b):
        return self.linear(b, None), None, None

    def linear(self, b, state):
        v = b.input()
        return v, torch.ones_like(v, dtype=torch.bool)

    def transpose(self, b, state, cot):
        return {b.nodes()[0]: cot[0]}  # the mask carries no cotangent

    def support(self, b, state):
        return self.linear(b, state)


class Offset(Rule):
    """Jointly linear in its inputs and constant offsets (add, sub, cat, stack, where, constant pad).

    The constant offsets (the static arguments at `positions` / `keys`) are dropped from the linear part
    and together make the bias.
    """

    kind = "offset"
    opens_static = True  # static arguments are offsets: they drop out of the linear part

    def __init__(self, positions=(0, 1), keys=("input", "other")):
        self.positions, self.keys = positions, keys

    def record(self, b):
        out = b()
        has_offset = []
        b.map_static(lambda x: has_offset.append(x) if _zero(x) is not x else x, self.positions, self.keys)
        if not has_offset:
            return out, None, None
        zeros = {n: torch.zeros_like(b.values[n]) if isinstance(b.values[n], torch.Tensor) else b.values[n]
                 for n in b.nodes()}
        bias = b.call(zeros)
        return out, None, (bias if bias.any() else None)

    def _linear_part(self, b) -> Bound:
        """The call with its offsets zeroed, those of batch 1 expanded to the batch of its inputs (in this pass)."""
        args, kwargs = b.map_static(_zero, self.positions, self.keys)
        n0 = b.input()
        batch = n0.shape[0] if isinstance(n0, torch.Tensor) else None

        def expand(x):  # constants of batch 1 next to inputs of batch B (cat, stack, a canvas written into); not a
            # (1,) or (1, W) constant of lower rank, which broadcasts along the last dimensions
            if isinstance(x, torch.Tensor) and batch and x.dim() == n0.dim() and x.shape[0] == 1 and batch != 1:
                return x.expand(batch, *x.shape[1:])
            return x
        args, kwargs = Bound(b.fn, args, kwargs, b.values).map_static(expand, self.positions, self.keys)
        return Bound(b.fn, args, kwargs, b.values)

    def linear(self, b, state):
        return self._linear_part(b)()

    def transpose(self, b, state, cot):
        return _vjp(self._linear_part(b), cot)


class Sum(Offset):
    """Addition and subtraction: the adjoint hands the cotangent to each input (negated for a subtrahend),
    without autograd when no broadcasting is involved."""

    def __init__(self, negate_second: bool):
        super().__init__()
        self.negate_second = negate_second

    def transpose(self, b, state, cot):
        if b.kwargs or len(b.args) != 2:
            return super().transpose(b, state, cot)
        grads: dict = {}
        for i, a in enumerate(b.args):
            if not isinstance(a, fx.Node):
                continue
            if tuple(b.values[a].shape) != tuple(cot.shape):
                return super().transpose(b, state, cot)
            g = -cot if (i == 1 and self.negate_second) else cot
            grads[a] = g if a not in grads else grads[a] + g
        return grads

    def support(self, b, state):
        """The union of the terms' supports (a difference of two overlapping terms does not cancel)."""
        return _union(b)


class Select(Offset):
    """`torch.where(condition, a, b)`: the condition is frozen at x0; the support pass opens it (both
    branches reach wherever either does, whatever the condition elsewhere in the image)."""

    def __init__(self):
        super().__init__(positions=(1, 2), keys=("input", "other"))

    def support(self, b, state):
        return _union(b)


class Assign(Offset):
    """``x[index] = v`` (recorded as `graph.setitem`, out of place): jointly linear in x and v, whose static parts are
    offsets (a constant canvas: x = torch.zeros_like(h); x[:, :c] = ...)."""

    def __init__(self):
        super().__init__(positions=(0, 2), keys=("tensor", "value"))

    def writes(self, b):
        return b.args[1]


class MaskedFill(Offset):
    """``x.masked_fill(mask, value)``: x with the masked elements replaced by a constant (the mask static or frozen at
    x0): linear in x, the constant an offset. A fill value that is not finite (-inf before a softmax) is refused: its
    offset would reach the output through gains of 0 (0·inf)."""

    def __init__(self):
        super().__init__(positions=(2,), keys=("value",))

    def refuse(self, b):
        value = b.args[2] if len(b.args) > 2 else b.kwargs.get("value")
        if not isinstance(value, fx.Node) and not bool(torch.isfinite(torch.as_tensor(value)).all()):
            return f"its fill value {value} is not finite (use a large finite one, e.g. -1e4 before a softmax)"
        return None


def _computed_from(node: fx.Node, source: fx.Node) -> bool:
    """True when ``source`` is among the nodes that ``node`` is computed from (its ancestors in the graph)."""
    seen, todo = set(), list(node.all_input_nodes)
    while todo:
        n = todo.pop()
        if n is source:
            return True
        if n not in seen:
            seen.add(n)
            todo.extend(n.all_input_nodes)
    return False


class Product(Rule):
    """Multiplication, division and matmul.

    With one factor depending on x it is linear as it is. When both do (gates, attention), the factor
    with fewer elements (the denominator of a division) is frozen at its x0 value, so the interpreter is exact
    at x0 and linear in the other factor. On a tie of sizes (a squeeze-excitation gate on a 1×1 feature map)
    the factor computed from the other is frozen (the gate, not the features it scales), whichever side of
    the product it is written on; the right one when neither is computed from the other.
    """

    kind = "product"
    opens_static = True

    def __init__(self, frozen_if_both: Callable[[Any, Any], int] | None = None, denominator: bool = False,
                 operands: tuple[int, int] = (0, 1)):
        self.choose = frozen_if_both or Product.by_size
        self.denominator = denominator
        self.operands = operands  # positions of the two factors among the arguments (einsum: after the equation)

    @staticmethod
    def by_size(a, b) -> int:
        """The position of the factor to freeze: the one with fewer elements (the right one on ties)."""
        return 0 if a.numel() < b.numel() else 1

    def record(self, b):
        first, second = self.operands
        a0, a1 = b.args[first], b.args[second]
        if self.denominator and isinstance(a1, fx.Node):
            pos = 1
        elif isinstance(a0, fx.Node) and isinstance(a1, fx.Node):
            v0, v1 = b.values[a0], b.values[a1]
            tie = self.choose is Product.by_size and v0.numel() == v1.numel()
            pos = (0 if _computed_from(a0, a1) and not _computed_from(a1, a0) else 1) if tie else self.choose(v0, v1)
        else:
            return b(), None, None
        pos = self.operands[pos]
        frozen = b.values[b.args[pos]].detach().clone()
        args = tuple(frozen if i == pos else a for i, a in enumerate(b.args))
        out = b()
        if not any(isinstance(args[i], fx.Node) for i in self.operands):  # e.g. c / x: constant at x0
            return out, {"args": args, "constant": True}, out.detach().clone()
        return out, {"args": args, "constant": False}, None

    def linear(self, b, state):
        if state is None:
            return b()
        if state["constant"]:
            return None
        return b.call(args=state["args"])

    def transpose(self, b, state, cot):
        if state is None:
            if b.fn in (operator.mul, torch.mul, torch.Tensor.mul) and not b.kwargs and len(b.args) == 2:
                node, other = (b.args[0], b.args[1]) if isinstance(b.args[0], fx.Node) else (b.args[1], b.args[0])
                if isinstance(other, (int, float)) and not isinstance(other, bool):
                    return {node: cot * other}
            return _vjp(b, cot)
        if state["constant"]:
            return {}
        return _vjp(Bound(b.fn, state["args"], b.kwargs, b.values), cot)

    def support(self, b, state):
        """Masks and gates opened: every static factor (a mask, a gate frozen at x0, a constant) counts as
        ones of its shape, so the product reaches wherever its input does (a matmul: along the whole
        contracted axis)."""
        if state is not None and state["constant"]:
            return None
        call = b if state is None else Bound(b.fn, state["args"], b.kwargs, b.values)
        args, kwargs = call.map_static(_ones)
        return call.call(args=args, kwargs=kwargs).abs()

    def approximation(self, state):
        return None if state is None else "frozen-factor"

    def crop(self, state, crop):
        if state is None or state["constant"]:
            return state
        return {**state, "args": tuple(crop(a) if isinstance(a, torch.Tensor) else a for a in state["args"])}


class Einsum(Product):
    """`torch.einsum(equation, *operands)` (torch.fx passes a list of operands as separate arguments): linear in one
    operand that depends on x; with two, a product (one frozen at x0, as `Product` chooses). More than two operands
    with a third one that depends on x are refused."""

    def __init__(self):
        super().__init__(operands=(1, 2))

    def refuse(self, b):
        if any(isinstance(a, fx.Node) for a in b.args[3:]):
            return "a third operand depends on the input (write it as einsums of two operands)"
        return None

    def record(self, b):
        if len(b.args) < 3:  # one operand: a permutation, diagonal or sum of it
            return b(), None, None
        return super().record(b)


class Statistic(Rule):
    """A statistic of the input along some dimensions (var, std, a norm), frozen at x0 as the statistics of a
    normalisation are (`Norm`): a constant of the interpreter, so that a normalisation written out by hand,
    ``(x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True)``, divides by its value at x0."""

    kind = "statistic"

    def record(self, b):
        out = b()
        return out, None, out.detach().clone()

    def linear(self, b, state):
        return None

    def transpose(self, b, state, cot):
        return {}

    def support(self, b, state):
        return None

    def approximation(self, state):
        return "frozen-statistics"


class Diagonal(Rule):
    """A linear interpreter that multiplies element-wise by a gain recorded at x0 (units, norms)."""

    opens_static = True  # the gain is recorded: static arguments (bounds, slopes) only shape it

    def linear(self, b, state):
        return b.input() * state["gain"]

    def transpose(self, b, state, cot):
        return {b.nodes()[0]: cot * state["gain"]}

    def support(self, b, state):
        return b.input()

    def crop(self, state, crop):
        return {**state, "gain": crop(state["gain"])}


class Unit(Diagonal):
    """A pointwise non-linear unit h replaced by A·y + c chosen at y0 (the unit's input at x0).

    `tangent`: the linear piece active at y0 (piecewise-linear units): A = h'(y0), c = h(y0) − A·y0.
    `secant`: A = (h(y0) − h(0)) / y0 (h'(0) where y0 ≈ 0: for h(0) ≠ 0 within 1e-6 of the largest |y0|, where
    the difference cancels; for h(0) = 0 only at 0 and in the subnormal range), c = h(0) (smooth units); a unit
    with no finite h(0) (log, rsqrt, reciprocal, a negative power) has no secant through 0 and gets its tangent.
    `derivative(y0, b)`, when given, computes h'(y0) directly instead of by autograd; a boolean derivative
    (a 0/1 mask, as for ReLU) means the unit has no offset.
    """

    def __init__(self, mode: str, derivative: Callable | None = None):
        assert mode in ("tangent", "secant")
        self.kind, self.derivative = mode, derivative

    def _h(self, b):
        node = b.nodes()[0]
        return lambda y: b.call({**b.values, node: y})

    def _grad(self, b, y):
        if self.derivative is not None:
            return self.derivative(y, b)
        with torch.enable_grad():
            leaf = y.detach().clone().requires_grad_(True)
            out = self._h(b)(leaf * 1)
            (g,) = torch.autograd.grad(out.sum(), leaf)
        return g

    def refuse(self, b):
        if len(b.nodes()) > 1:  # x ** x, pow(h, g): not a unit of one input
            return "more than one of its arguments depends on the input"
        return None

    def record(self, b):
        y0 = b.input().detach()
        h0 = None
        if self.kind == "secant":
            with torch.no_grad():
                h0 = self._h(b)(torch.zeros_like(y0))
        if h0 is None or not torch.isfinite(h0).all():
            gain = self._grad(b, y0)
            if gain.dtype == torch.bool:  # a mask: h(y) = mask·y, no offset
                return b(), {"gain": gain.to(y0.dtype)}, None
            y0 = y0.clone()  # the unit may work in place
            out = b()
            offset = out.detach() - gain * y0
            return out, {"gain": gain, "tangent": True}, (offset if offset.any() else None)
        else:
            y0 = y0.clone()
            h = self._h(b)
            out = b()
            if h0.any():  # h(y0) − h(0) cancels digits where |y0| is small: h'(0) there
                small = y0.abs() <= 1e-6 * y0.abs().max().clamp_min(1.0)
            else:  # h(y0) / y0 cancels nothing: every y0 off zero gets its own secant, so that A·y0 = h(y0) (h'(0)
                # would miss h(y0) by the unit's curvature, y0²·h''(0)/2); h'(0) only at 0 and where y0 or h(y0)
                # would be subnormal (and lose digits)
                small = y0.abs() < 4 * torch.finfo(y0.dtype).tiny
            denominator = torch.where(small, torch.ones_like(y0), y0)
            gain = _secant(h, y0, denominator, out.detach() - h0) if h0.any() else out.detach() / denominator
            if small.any():  # h'(0); 0 where it is not finite (sqrt at 0: any gain is exact there)
                slope = self._grad(b, torch.zeros_like(y0))
                gain = torch.where(small, torch.where(torch.isfinite(slope), slope, 0.0), gain)
            offset = h0
        return out, {"gain": gain}, (offset if offset.any() else None)

    def approximation(self, state):
        return "secant" if self.kind == "secant" and not state.get("tangent") else None


def _secant(h, y0, denominator, difference):
    """The secant gain (h(y0) − h(0)) / y0 of a unit h with h(0) ≠ 0, in float64 when y0 is in a lower precision
    and h runs in float64 (h(y0) − h(0) loses most of its digits to cancellation where |y0| is small: a sigmoid
    near 0), else ``difference / denominator`` (the difference as the model computed it)."""
    if y0.dtype in (torch.float32, torch.float16, torch.bfloat16):
        try:
            with torch.no_grad():
                y = y0.double()
                return ((h(y.clone()) - h(torch.zeros_like(y))) / denominator.double()).to(y0.dtype)
        except (RuntimeError, TypeError):  # a unit (or a device) without float64
            pass
    return difference / denominator


def _relu_derivative(y, b):
    return y > 0


class MaxPool(Rule):
    """Max pooling (also adaptive): the switches x0 selects. `with_indices(b)` -> (output, flat indices).

    A call that returns the indices too (``return_indices=True``, for a MaxUnpool) gives (values, the indices of
    x0) in every pass, as `MaxAlong` does; the indices are frozen at x0 (static for every later operation).
    State: `idx` (the switches, re-based on a window's input by `crop`), `in_spatial`, `indices` (the call's
    own indices at x0, or None when it returns none)."""

    kind = "switches"

    def __init__(self, with_indices: Callable, returns_indices: Callable[[Bound], bool] = lambda b: False):
        self.with_indices, self.returns_indices = with_indices, returns_indices

    def record(self, b):
        x0 = b.input()
        out, idx = self.with_indices(b)
        indices = idx if self.returns_indices(b) else None
        state = {"idx": idx, "in_spatial": tuple(x0.shape[2:]), "indices": indices}
        return (out if indices is None else (out, indices)), state, None

    def linear(self, b, state):
        v, idx = b.input(), state["idx"]
        flat = idx.flatten(2).expand(v.shape[0], -1, -1)
        out = v.flatten(2).gather(2, flat).view(v.shape[0], *idx.shape[1:])
        out = out * state["valid"] if "valid" in state else out
        return out if state["indices"] is None else (out, state["indices"])

    def transpose(self, b, state, cot):
        idx = state["idx"]
        cot = cot if state["indices"] is None else cot[0]  # the indices carry no cotangent
        cot = cot * state["valid"] if "valid" in state else cot
        n, c = cot.shape[:2]
        flat = idx.flatten(2).expand(n, -1, -1)
        size = 1
        for s in state["in_spatial"]:
            size *= s
        out = cot.new_zeros(n, c, size).scatter_add_(2, flat, cot.flatten(2))
        return {b.nodes()[0]: out.view(n, c, *state["in_spatial"])}

    def support(self, b, state):
        out = self.with_indices(b)[0]
        return out if state["indices"] is None else (out, state["indices"])

    def crop(self, state, crop):
        """Switches of the window: flat indices re-based on the cropped input; switches that fall outside
        it (pooling windows across its edge, where perturbations are zero) are masked out."""
        if len(state["in_spatial"]) != 2:
            return state
        top, left, h, w = crop.box(state["in_spatial"])
        idx = crop(state["idx"])
        y, x = idx // state["in_spatial"][1] - top, idx % state["in_spatial"][1] - left
        valid = (y >= 0) & (y < h) & (x >= 0) & (x < w)
        return {**state, "idx": torch.where(valid, y * w + x, 0), "in_spatial": (h, w), "valid": valid}


class Unpool(Rule):
    """MaxUnpool (module or functional): linear in its input, by the indices of a max pool frozen at x0 (the second
    argument, or `indices`), which have batch 1: each pass expands them to its batch."""

    @staticmethod
    def _batched(b: Bound, batch: int) -> Bound:
        def expand(a):
            return a.expand(batch, *a.shape[1:]) if isinstance(a, torch.Tensor) and a.shape[0] != batch else a
        args = tuple(expand(a) if i == 1 else a for i, a in enumerate(b.args))
        kwargs = {k: expand(a) if k == "indices" else a for k, a in b.kwargs.items()}
        return Bound(b.fn, args, kwargs, b.values)

    def linear(self, b, state):
        return self._batched(b, b.input().shape[0])()

    def transpose(self, b, state, cot):
        return _vjp(self._batched(b, cot.shape[0]), cot)


def _amax_signature(input, dim=(), keepdim=False):
    """The documented argument list of torch.amax / torch.amin, their tensor methods and torch.max / torch.min
    of the whole tensor."""


def _along_signature(input, dim, keepdim=False):
    """The documented argument list of torch.max / torch.min along a dimension (function or tensor method)."""


def _pair_signature(input, other):
    """The documented argument list of torch.maximum / torch.minimum and of torch.max / torch.min of two tensors."""


def _reduced_dims(dim, ndim: int) -> tuple:
    """The dimensions a reduction over `dim` (an int, a tuple, or () / None: every dimension) removes, sorted
    and non-negative. One over the batch dimension (dim 0) is refused: linear passes run on batches."""
    dims = (dim,) if isinstance(dim, int) else tuple(dim or range(ndim))
    dims = tuple(sorted(d % ndim for d in dims))
    if 0 in dims:
        what = "gives a scalar of the whole batch" if len(dims) == ndim else "reduces over the batch dimension"
        raise UnsupportedOperation(f"it {what}; keep the batch dimension (e.g. dim=(1, 2, 3), keepdim=True)")
    return dims


class AMax(Rule):
    """``amax`` or ``amin`` over some dimensions (channel max in spatial attention): the switches x0 selects,
    split evenly between tied extrema as autograd splits them, so that F is the Jacobian.

    State: `weights` (x0's shape), the share of each element in its group's extremum; `dims`, `keepdim`."""

    kind = "switches"
    signature = staticmethod(_amax_signature)

    def record(self, b):
        x0, out = b.input(), b()
        args = inspect.signature(self.signature).bind(*map_values(b, b.args), **map_values(b, b.kwargs))
        args.apply_defaults()
        dims, keepdim = _reduced_dims(args.arguments["dim"], x0.dim()), bool(args.arguments["keepdim"])
        return out, {"weights": self.switches(x0, out, dims, keepdim), "dims": dims, "keepdim": keepdim}, None

    @staticmethod
    def switches(x0, out, dims, keepdim) -> torch.Tensor:
        """The weights (x0's shape): 1 / (number of ties) on the elements equal to their group's extremum."""
        top = out if keepdim else out.reshape([1 if d in dims else n for d, n in enumerate(x0.shape)])
        chosen = (x0 == top).to(x0.dtype)
        return chosen / chosen.sum(dims, keepdim=True)

    def linear(self, b, state):
        return (b.input() * state["weights"]).sum(state["dims"], keepdim=state["keepdim"])

    def transpose(self, b, state, cot):
        if not state["keepdim"]:
            for d in state["dims"]:
                cot = cot.unsqueeze(d)
        return {b.nodes()[0]: cot * state["weights"]}

    def support(self, b, state):
        return b()  # the max of 0/1 indicators: every element of a reduced group reaches its output

    def crop(self, state, crop):
        return {**state, "weights": crop(state["weights"])}


class MaxAlong(AMax):
    """torch.max / torch.min along one dimension (function or tensor method): the named tuple (values, indices).

    The values are the switches of x0, each group's whole weight on the element its index names (autograd routes
    the gradient there, ties included, so that F is the Jacobian); the indices are frozen at x0 (integers, static
    for every later operation). Linear passes give (values, the indices of x0)."""

    signature = staticmethod(_along_signature)

    def record(self, b):
        out, state, bias = super().record(b)
        return out, {**state, "indices": out.indices}, bias

    @staticmethod
    def switches(x0, out, dims, keepdim) -> torch.Tensor:
        """One-hot weights (x0's shape) at the indices x0 selects."""
        (dim,) = dims
        indices = out.indices if keepdim else out.indices.unsqueeze(dim)
        return torch.zeros_like(x0).scatter_(dim, indices, 1.0)

    def linear(self, b, state):
        return super().linear(b, state), state["indices"]

    def transpose(self, b, state, cot):
        return super().transpose(b, state, cot[0])  # the indices carry no cotangent


class Switch(Offset):
    """The element-wise max or min of two tensors (torch.maximum, torch.max(a, b), ...): w·a + (1 − w)·b with
    the switches of x0, w = 1 where a wins (`wins(a0, b0)`), 0 where b does and ½ on ties (as autograd splits
    them), so that F is the Jacobian. State: w, shaped like the output. A static operand (a threshold map) is an
    offset: its share goes to the bias."""

    kind = "switches"

    def __init__(self, wins: Callable):
        super().__init__()
        self.wins = wins

    def record(self, b):
        bound = inspect.signature(_pair_signature).bind(*map_values(b, b.args), **map_values(b, b.kwargs))
        first, second, out = bound.arguments["input"], bound.arguments["other"], b()
        weight = self.wins(first, second).to(out.dtype) + 0.5 * (first == second).to(out.dtype)
        _, _, bias = super().record(self._blended(b, weight))
        return out, weight, bias

    @staticmethod
    def _blended(b, weight):
        """The call as weight·input + (1 − weight)·other, on the same operands."""
        return Bound(lambda input, other: weight * input + (1 - weight) * other, b.args, b.kwargs, b.values)

    def linear(self, b, state):
        return super().linear(self._blended(b, state), None)

    def transpose(self, b, state, cot):
        return super().transpose(self._blended(b, state), None, cot)

    def support(self, b, state):
        return _union(b)

    def crop(self, state, crop):
        return crop(state)


class Overloads(Rule):
    """A function with several call forms (torch.max: of the whole tensor, along a dimension, of two tensors),
    one rule each: `form(b)` picks the rule of the call, and every pass goes to it. State: (rule, its state)."""

    kind = "switches"

    def __init__(self, form: Callable[[Bound], Rule]):
        self.form = form

    def record(self, b):
        rule = self.form(b)
        out, state, bias = rule.record(b)
        return out, (rule, state), bias

    def linear(self, b, state):
        return state[0].linear(b, state[1])

    def transpose(self, b, state, cot):
        return state[0].transpose(b, state[1], cot)

    def support(self, b, state):
        return state[0].support(b, state[1])

    def approximation(self, state):
        return state[0].approximation(state[1])

    def crop(self, state, crop):
        return state[0], state[0].crop(state[1], crop)


def _extremum(along: Rule, pair: Rule, whole: Rule) -> Overloads:
    """torch.max or torch.min (function or tensor method): `pair` when the second operand is a tensor, `along`
    when it is a dimension, `whole` without one."""
    def form(b):
        second = b.args[1] if len(b.args) > 1 else b.kwargs.get("dim", b.kwargs.get("other"))
        if isinstance(second, (fx.Node, torch.Tensor)):
            return pair
        return whole if second is None else along
    return Overloads(form)


class EvalOnly(Overloads):
    """An operation that is random in training and `rule` otherwise: dropout of every kind and stochastic depth (the
    identity), RReLU (a leaky ReLU of slope (lower + upper) / 2: `TANGENT`, exact). A call that samples (a module in
    training mode, or a function called with ``flag=True``) and whose arguments are `active` (p ≠ 0; lower ≠ upper)
    is refused, saying what it `does` at random (`refuse`); every other call is `rule`'s.

    A module's arguments are its attributes (training, p, lower, upper); a function's are bound to `signature` (the
    documented argument list, for builtins that carry none; default: the function's own), and `samples(flag)` says
    whether the flag's value samples (default: when true; torch.native_dropout samples with train=None too)."""

    random = True

    def __init__(self, rule: Rule, does: str, active: Callable[[dict], bool], flag: str = "training",
                 signature: Callable | None = None, samples: Callable[[Any], bool] = bool):
        super().__init__(lambda b: rule)
        self.kind, self.opens_static = rule.kind, rule.opens_static
        self.does, self.active, self.flag, self.signature, self.samples = does, active, flag, signature, samples

    def refuse(self, b):
        if isinstance(b.fn, nn.Module):
            if b.fn.training and self.active(vars(b.fn)):
                return (f"it {self.does} (the module is in training mode): interpret the model in eval mode "
                        f"(eval_mode=True, the default, or model.eval())")
            return None
        bound = inspect.signature(self.signature or b.fn).bind(*map_values(b, b.args), **map_values(b, b.kwargs))
        bound.apply_defaults()
        flag = bound.arguments[self.flag]
        if self.samples(flag) and self.active(bound.arguments):
            return (f"it {self.does} ({self.flag}={flag!r}): pass {self.flag}=self.training and put the model in "
                    f"eval mode")
        return None


def _drops(arguments: dict) -> bool:
    """Whether a dropout's arguments drop anything (p ≠ 0)."""
    return bool(arguments["p"])


def _random_slopes(arguments: dict) -> bool:
    """Whether an RReLU's arguments draw its negative slopes from an interval (lower ≠ upper), not one value."""
    return arguments["lower"] != arguments["upper"]


def _torch_dropout_signature(input, p, train):
    """The documented argument list of torch.dropout, feature_dropout, alpha_dropout, feature_alpha_dropout, their
    in-place forms and torch.native_dropout (builtins carry no signature)."""


def _rrelu_signature(input, lower=1.0 / 8, upper=1.0 / 3, training=False, generator=None):
    """The documented argument list of torch.rrelu and torch.rrelu_ (= F.rrelu_)."""


def _module_pool_indices(b):
    m: nn.Module = b.fn
    nd = len(b.input().shape) - 2
    if isinstance(m, nn.modules.pooling._AdaptiveMaxPoolNd):
        fn = getattr(F, f"adaptive_max_pool{nd}d_with_indices")
        return fn(b.input(), m.output_size, return_indices=True)
    fn = getattr(F, f"max_pool{nd}d_with_indices")
    return fn(b.input(), m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode,
              return_indices=True)


def _functional_pool_indices(name: str):
    fn = getattr(F, f"{name}_with_indices")
    sig = inspect.signature(fn)

    def with_indices(b):
        bound = sig.bind(*map_values(b, b.args), **map_values(b, b.kwargs))
        bound.arguments["return_indices"] = True
        return fn(*bound.args, **bound.kwargs)
    return with_indices


def map_values(b: Bound, tree):
    return torch.fx.node.map_aggregate(tree, lambda a: b.values[a] if isinstance(a, fx.Node) else a)


class Norm(Diagonal):
    """Normalisation with the statistics of x0 frozen: y -> gain·y + shift (per channel, group or instance).

    `affine(b) -> (gain, shift, frozen)`: gain and shift broadcastable to the output, from the layer's
    statistics at x0 (running statistics for BatchNorm in eval mode, as the layer itself uses them);
    `frozen` is True when those statistics are computed from the input (then the interpreter is not the
    Jacobian: the statistics' own dependence on x is dropped), False for running statistics (exact).
    """

    kind = "frozen statistics"

    def __init__(self, affine: Callable):
        self.affine = affine

    def record(self, b):
        x0 = b.input().detach()
        gain, shift, frozen = self.affine(b, x0)
        out = b()
        return out, {"gain": gain, "frozen": bool(frozen)}, shift

    def approximation(self, state):
        return "frozen-statistics" if state["frozen"] else None


def _stats(x, dims):
    return x.mean(dim=dims, keepdim=True), x.var(dim=dims, unbiased=False, keepdim=True)


def _gain_shift(x, mean, var, weight, bias, eps, per_channel: bool = True):
    """(gain, shift) of a normalisation with statistics (mean, var): y = gain·x + shift. ``per_channel``: a 1-D
    weight and bias are per channel (dim 1: batch, instance and group norm); else they are shaped like the
    last dimensions, which they broadcast against as they are (layer norm)."""
    nd = x.dim()
    w = _channel_view(weight, nd) if per_channel and weight is not None and weight.dim() == 1 else weight
    bb = _channel_view(bias, nd) if per_channel and bias is not None and bias.dim() == 1 else bias
    gain = torch.rsqrt(var + eps)
    if w is not None:
        gain = gain * w
    shift = -mean * gain
    if bb is not None:
        shift = shift + bb
    return gain.detach(), shift.detach()


def _batch_norm(x, running_mean, running_var, weight, bias, use_batch_stats, eps):
    nd = x.dim()
    frozen = bool(use_batch_stats) or running_mean is None
    if frozen:
        mean, var = _stats(x, [0] + list(range(2, nd)))
    else:
        mean, var = _channel_view(running_mean, nd), _channel_view(running_var, nd)
    return (*_gain_shift(x, mean, var, weight, bias, eps), frozen)


def _instance_norm(x, running_mean, running_var, weight, bias, use_input_stats, eps):
    nd = x.dim()
    frozen = bool(use_input_stats) or running_mean is None
    if frozen:
        mean, var = _stats(x, list(range(2, nd)))
    else:
        mean, var = _channel_view(running_mean, nd), _channel_view(running_var, nd)
    return (*_gain_shift(x, mean, var, weight, bias, eps), frozen)


def _group_norm(x, groups, weight, bias, eps):
    n, c = x.shape[:2]
    xg = x.reshape(n, groups, -1)
    mean, var = _stats(xg, [2])
    mean = mean.reshape(n, groups, 1).expand(n, groups, c // groups).reshape(n, c, *([1] * (x.dim() - 2)))
    var = var.reshape(n, groups, 1).expand(n, groups, c // groups).reshape(n, c, *([1] * (x.dim() - 2)))
    return (*_gain_shift(x, mean, var, weight, bias, eps), True)


def _layer_norm(x, normalized_shape, weight, bias, eps):
    dims = list(range(x.dim() - len(normalized_shape), x.dim()))
    mean, var = _stats(x, dims)
    return (*_gain_shift(x, mean, var, weight, bias, eps, per_channel=False), True)


def _rms_norm(x, normalized_shape, weight, eps):
    dims = list(range(x.dim() - len(normalized_shape), x.dim()))
    eps = torch.finfo(x.dtype).eps if eps is None else eps
    gain = torch.rsqrt(x.pow(2).mean(dim=dims, keepdim=True) + eps)
    if weight is not None:
        gain = gain * weight
    return gain.detach(), None, True


def _bn_module(b, x):
    m = b.fn
    batch_stats = m.training or not m.track_running_stats or m.running_mean is None
    return _batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, batch_stats, m.eps)


def _in_module(b, x):
    m = b.fn
    input_stats = m.training or not m.track_running_stats or m.running_mean is None
    return _instance_norm(x, m.running_mean, m.running_var, m.weight, m.bias, input_stats, m.eps)


def _gn_module(b, x):
    m = b.fn
    return _group_norm(x, m.num_groups, m.weight, m.bias, m.eps)


def _ln_module(b, x):
    m = b.fn
    return _layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps)


def _rms_module(b, x):
    m = b.fn
    return _rms_norm(x, m.normalized_shape, m.weight, m.eps)


def _functional(fn, adapter):
    """Bind a functional call's arguments by name and pass them to `adapter(x, arguments)`."""
    sig = inspect.signature(fn)

    def affine(b, x):
        args = sig.bind(*map_values(b, b.args), **map_values(b, b.kwargs)).arguments
        params = sig.parameters
        get = lambda name: args.get(name, params[name].default)  # noqa: E731
        return adapter(x, get)
    return affine


_F_BATCH_NORM = _functional(F.batch_norm, lambda x, g: _batch_norm(
    x, g("running_mean"), g("running_var"), g("weight"), g("bias"), g("training"), g("eps")))
_F_INSTANCE_NORM = _functional(F.instance_norm, lambda x, g: _instance_norm(
    x, g("running_mean"), g("running_var"), g("weight"), g("bias"), g("use_input_stats"), g("eps")))
_F_GROUP_NORM = _functional(F.group_norm, lambda x, g: _group_norm(
    x, g("num_groups"), g("weight"), g("bias"), g("eps")))
_F_LAYER_NORM = _functional(F.layer_norm, lambda x, g: _layer_norm(
    x, g("normalized_shape"), g("weight"), g("bias"), g("eps")))
_F_RMS_NORM = _functional(F.rms_norm, lambda x, g: _rms_norm(x, g("normalized_shape"), g("weight"), g("eps")))
_F_NORMALIZE = _functional(F.normalize, lambda x, g: (
    1 / torch.linalg.vector_norm(x, g("p"), g("dim"), keepdim=True).clamp_min(g("eps")), None, True))


def _softmax_dim(dim, x) -> int:
    """The dimension of a softmax: ``dim``, or torch's implicit choice when it is None (0 for 0-, 1- and 3-D inputs,
    else 1)."""
    return (0 if x.dim() in (0, 1, 3) else 1) if dim is None else dim


def _softmax(log: bool, dim_of: Callable):
    """`Norm`'s affine of softmax (``log`` False) or log-softmax along the dimension ``dim_of(b)``: the sum of
    exponentials S0 = Σ exp(z0) along it frozen at x0 (in float64, the maximum taken out). Softmax = exp(z) / S0
    with exp by its secant through 0, as `Unit` replaces a smooth unit and `Product` freezes a denominator:
    gain (exp(z0) − 1) / (z0·S0) (1 / S0 at z0 = 0), shift 1 / S0, so that a softmax written out by hand,
    ``z.exp() / z.exp().sum(dim, keepdim=True)``, gets the same F. Log-softmax = z − log S0: gain 1, shift
    −log S0."""
    def affine(b, z0):
        z = z0.double()
        log_sum = torch.logsumexp(z, _softmax_dim(dim_of(b), z), keepdim=True)
        if log:
            return torch.ones_like(z0), (-log_sum).to(z0.dtype), True
        inverse = torch.exp(-log_sum)
        near = z.abs() < 1  # exp(z) − 1 without cancellation near 0, and without overflow far from it
        secant = torch.where(near, torch.special.expm1(z) * inverse, torch.exp(z - log_sum) - inverse)
        gain = torch.where(z == 0, inverse, secant / torch.where(z == 0, 1.0, z))
        return gain.to(z0.dtype), inverse.to(z0.dtype), True
    return affine


def _f_softmax_signature(input, dim=None, _stacklevel=3, dtype=None):
    """The documented argument list of F.softmax and F.log_softmax."""


def _torch_softmax_signature(input, dim, dtype=None):
    """The documented argument list of torch.softmax, torch.log_softmax and their tensor methods."""


def _bound_dim(signature: Callable) -> Callable:
    """The ``dim`` argument of a call, bound by name by ``signature``."""
    sig = inspect.signature(signature)
    return lambda b: sig.bind(*b.args, **b.kwargs).arguments.get("dim")


class ConvModule(Rule):
    """nn.Conv1d/2d/3d (any stride, padding, dilation, groups, padding mode): linear part without bias."""

    kind = "affine"

    def record(self, b):
        m = b.fn
        return b(), None, _channel_view(m.bias.detach(), b.input().dim()) if m.bias is not None else None

    def linear(self, b, state):
        m, v = b.fn, b.input()
        if v.dim() == 4 and v.device.type == "cpu" and m.padding_mode == "zeros" and not isinstance(m.padding, str):
            return conv2d_on_support(v, m.weight, m.stride, m.padding, m.dilation, m.groups)
        return m._conv_forward(v, m.weight, None)

    def transpose(self, b, state, cot):
        m = b.fn
        nd = cot.dim() - 2
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            return _vjp(Bound(lambda x: m._conv_forward(x, m.weight, None), b.args, {}, b.values), cot)
        x = b.values[b.nodes()[0]]
        grad_input = getattr(torch.nn.grad, f"conv{nd}d_input")
        return {b.nodes()[0]: grad_input(x.shape, m.weight, cot, m.stride, m.padding, m.dilation, m.groups)}

    def support(self, b, state):
        return b.fn._conv_forward(b.input(), b.fn.weight.abs(), None)


class ConvTransposeModule(Rule):
    """nn.ConvTranspose1d/2d/3d: linear part without bias; its adjoint is the forward convolution."""

    kind = "affine"

    def record(self, b):
        m, x0 = b.fn, b.input()
        nd = x0.dim() - 2
        output_size = b.args[1] if len(b.args) > 1 else b.kwargs.get("output_size")
        pad = m._output_padding(x0, output_size, m.stride, m.padding, m.kernel_size, nd, m.dilation)
        bias = _channel_view(m.bias.detach(), x0.dim()) if m.bias is not None else None
        return b(), {"output_padding": pad}, bias

    def linear(self, b, state):
        m, v = b.fn, b.input()
        fn = getattr(F, f"conv_transpose{v.dim() - 2}d")
        return fn(v, m.weight, None, m.stride, m.padding, state["output_padding"], m.groups, m.dilation)

    def transpose(self, b, state, cot):
        m = b.fn
        fn = getattr(F, f"conv{cot.dim() - 2}d")
        return {b.nodes()[0]: fn(cot, m.weight, None, m.stride, m.padding, m.dilation, m.groups)}

    def support(self, b, state):
        m, v = b.fn, b.input()
        fn = getattr(F, f"conv_transpose{v.dim() - 2}d")
        return fn(v, m.weight.abs(), None, m.stride, m.padding, state["output_padding"], m.groups, m.dilation)


class LinearModule(Rule):
    """nn.Linear: y = W x (+ b)."""

    kind = "affine"

    def record(self, b):
        return b(), None, (b.fn.bias.detach() if b.fn.bias is not None else None)

    def linear(self, b, state):
        return F.linear(b.input(), b.fn.weight)

    def transpose(self, b, state, cot):
        return {b.nodes()[0]: cot @ b.fn.weight}

    def support(self, b, state):
        return F.linear(b.input(), b.fn.weight.abs())


class FunctionalAffine(Rule):
    """F.conv*d, F.conv_transpose*d, F.linear: the `bias` argument is the bias; the weight must be static."""

    kind = "affine"

    def __init__(self, signature: Callable, dense: bool = False):
        self.sig, self.dense = inspect.signature(signature), dense

    def record(self, b):
        bound = self.sig.bind(*b.args, **b.kwargs)
        bias = bound.arguments.get("bias")
        if any(isinstance(bound.arguments.get(k), fx.Node) for k in ("weight", "bias")):
            raise UnsupportedOperation("a weight or bias that depends on the input")
        bound.arguments["bias"] = None
        out = b()
        if bias is not None:
            bias = bias.detach() if self.dense else _channel_view(bias.detach(), out.dim())
        return out, (tuple(bound.args), dict(bound.kwargs)), bias

    def linear(self, b, state):
        return b.call(args=state[0], kwargs=state[1])

    def transpose(self, b, state, cot):
        return _vjp(Bound(b.fn, state[0], state[1], b.values), cot)

    def support(self, b, state):
        bound = self.sig.bind(*state[0], **state[1])
        bound.arguments["weight"] = bound.arguments["weight"].abs()
        return b.call(args=tuple(bound.args), kwargs=dict(bound.kwargs))


class Shuffle(Rule):
    """Pixel shuffle and unshuffle (module or functional): permutations whose adjoint is the other one."""

    kind = "linear"

    def __init__(self, inverse: Callable, factor: Callable):
        self.inverse, self.factor = inverse, factor

    def transpose(self, b, state, cot):
        return {b.nodes()[0]: self.inverse(cot, self.factor(b))}


def _shuffle_factor(b):
    if isinstance(b.fn, nn.Module):
        return getattr(b.fn, "upscale_factor", None) or b.fn.downscale_factor
    return b.args[1] if len(b.args) > 1 else next(iter(b.kwargs.values()))


SHUFFLE = Shuffle(F.pixel_unshuffle, _shuffle_factor)
UNSHUFFLE = Shuffle(F.pixel_shuffle, _shuffle_factor)

# --------------------------------------------------------------------------------------------------------
# the tables

LINEAR = Rule()
IDENTITY = Identity()
RANDOM = Random()
CONSTANT, UNINITIALISED = Constant(), Uninitialised()
OFFSET = Offset()
PRODUCT = Product()
DIVISION = Product(denominator=True)
MATMUL = Product(frozen_if_both=lambda a, b: 1)
TANGENT = Unit("tangent")
RELU = Unit("tangent", derivative=_relu_derivative)
SECANT = Unit("secant")
AMAX = AMax()
ALONG = MaxAlong()
MAXIMUM, MINIMUM = Switch(torch.gt), Switch(torch.lt)
MAX, MIN = _extremum(ALONG, MAXIMUM, AMAX), _extremum(ALONG, MINIMUM, AMAX)
DROPOUT = EvalOnly(IDENTITY, "drops values at random", _drops)
RRELU = EvalOnly(TANGENT, "draws random negative slopes", _random_slopes)

UNPOOL = Unpool()
MODULE_MAX_POOL = MaxPool(_module_pool_indices, returns_indices=lambda b: b.fn.return_indices)

MODULE_RULES: dict[type, Rule] = {
    nn.Conv1d: ConvModule(), nn.Conv2d: ConvModule(), nn.Conv3d: ConvModule(),
    nn.ConvTranspose1d: ConvTransposeModule(), nn.ConvTranspose2d: ConvTransposeModule(),
    nn.ConvTranspose3d: ConvTransposeModule(),
    nn.Linear: LinearModule(),
    nn.ReLU: RELU,
    nn.ReLU6: TANGENT, nn.LeakyReLU: TANGENT, nn.PReLU: TANGENT, nn.Hardtanh: TANGENT,
    nn.Hardsigmoid: TANGENT, nn.Threshold: TANGENT, nn.Hardshrink: TANGENT, nn.Softshrink: TANGENT,
    nn.RReLU: RRELU,
    nn.Sigmoid: SECANT, nn.Tanh: SECANT, nn.SiLU: SECANT, nn.GELU: SECANT, nn.ELU: SECANT, nn.SELU: SECANT,
    nn.CELU: SECANT, nn.Softplus: SECANT, nn.Mish: SECANT, nn.Hardswish: SECANT, nn.LogSigmoid: SECANT,
    nn.Softsign: SECANT, nn.Tanhshrink: SECANT,
    nn.MaxPool1d: MODULE_MAX_POOL, nn.MaxPool2d: MODULE_MAX_POOL, nn.MaxPool3d: MODULE_MAX_POOL,
    nn.AdaptiveMaxPool1d: MODULE_MAX_POOL, nn.AdaptiveMaxPool2d: MODULE_MAX_POOL, nn.AdaptiveMaxPool3d: MODULE_MAX_POOL,
    nn.MaxUnpool1d: UNPOOL, nn.MaxUnpool2d: UNPOOL, nn.MaxUnpool3d: UNPOOL,
    nn.BatchNorm1d: Norm(_bn_module), nn.BatchNorm2d: Norm(_bn_module), nn.BatchNorm3d: Norm(_bn_module),
    nn.InstanceNorm1d: Norm(_in_module), nn.InstanceNorm2d: Norm(_in_module),
    nn.InstanceNorm3d: Norm(_in_module), nn.GroupNorm: Norm(_gn_module), nn.LayerNorm: Norm(_ln_module),
    nn.RMSNorm: Norm(_rms_module),
    nn.Softmax: Norm(_softmax(False, lambda b: b.fn.dim)), nn.LogSoftmax: Norm(_softmax(True, lambda b: b.fn.dim)),
    nn.Softmax2d: Norm(_softmax(False, lambda b: -3)),
    nn.AvgPool1d: LINEAR, nn.AvgPool2d: LINEAR, nn.AvgPool3d: LINEAR,
    nn.AdaptiveAvgPool1d: LINEAR, nn.AdaptiveAvgPool2d: LINEAR, nn.AdaptiveAvgPool3d: LINEAR,
    nn.PixelShuffle: SHUFFLE, nn.PixelUnshuffle: UNSHUFFLE, nn.Upsample: LINEAR, nn.UpsamplingNearest2d: LINEAR,
    nn.UpsamplingBilinear2d: LINEAR, nn.Flatten: LINEAR, nn.Unflatten: LINEAR, nn.ChannelShuffle: LINEAR,
    nn.ZeroPad1d: LINEAR, nn.ZeroPad2d: LINEAR, nn.ZeroPad3d: LINEAR,
    nn.ReflectionPad1d: LINEAR, nn.ReflectionPad2d: LINEAR, nn.ReflectionPad3d: LINEAR,
    nn.ReplicationPad1d: LINEAR, nn.ReplicationPad2d: LINEAR, nn.ReplicationPad3d: LINEAR,
    nn.CircularPad1d: LINEAR, nn.CircularPad2d: LINEAR, nn.CircularPad3d: LINEAR,
    nn.Identity: IDENTITY, nn.Dropout: DROPOUT, nn.Dropout1d: DROPOUT, nn.Dropout2d: DROPOUT,
    nn.Dropout3d: DROPOUT, nn.AlphaDropout: DROPOUT, nn.FeatureAlphaDropout: DROPOUT,
}


class ConstantPadModule(Offset):
    """nn.ConstantPadNd: padding with a value c is the zero padding plus a constant frame of c."""

    def record(self, b):
        out = b()
        zero = b.call({n: torch.zeros_like(b.values[n]) for n in b.nodes()})
        return out, None, (zero if zero.any() else None)

    def linear(self, b, state):
        return F.pad(b.input(), b.fn.padding, "constant", 0.0)

    def transpose(self, b, state, cot):
        return _vjp(Bound(lambda x: F.pad(x, b.fn.padding, "constant", 0.0), b.args, {}, b.values), cot)


for _cls in (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d):
    MODULE_RULES[_cls] = ConstantPadModule()


def _functions(names: str, module=F) -> list:
    return [getattr(module, n) for n in names.split() if hasattr(module, n)]


FUNCTION_RULES: dict[Any, Rule] = {F.pixel_shuffle: SHUFFLE, F.pixel_unshuffle: UNSHUFFLE}
for _fns, _rule in [
    (_functions("relu relu_") + _functions("relu relu_", torch), RELU),
    (_functions("relu6 leaky_relu leaky_relu_ prelu hardtanh hardtanh_ hardsigmoid threshold threshold_ "
                "hardshrink softshrink") + _functions("clamp clip clamp_ clip_ abs prelu", torch), TANGENT),
    (_functions("rrelu"), RRELU),
    (_functions("rrelu rrelu_", torch), EvalOnly(TANGENT, "draws random negative slopes", _random_slopes,
                                                 signature=_rrelu_signature)),
    (_functions("elu elu_ selu celu gelu silu mish softplus hardswish logsigmoid softsign tanhshrink "
                "sigmoid tanh") + _functions("sigmoid tanh exp exp2 expm1 square sqrt rsqrt reciprocal log log1p log2 "
                                             "log10 sin cos atan asinh erf erfc pow float_power", torch)
     + [operator.pow], SECANT),
    (_functions("clamp_min clamp_max", torch), TANGENT),
    (_functions("var std norm logsumexp", torch) + [torch.linalg.vector_norm], Statistic()),
    (_functions("masked_fill", torch), MaskedFill()),
    (_functions("zeros_like ones_like full_like", torch), CONSTANT),
    (_functions("empty empty_like", torch), UNINITIALISED),
    ([setitem], Assign()),
    (_functions("native_dropout", torch), EvalOnly(MaskedIdentity(), "drops values at random", _drops, flag="train",
                                                   signature=_torch_dropout_signature,
                                                   samples=lambda train: train is not False)),
    (_functions("avg_pool1d avg_pool2d avg_pool3d adaptive_avg_pool1d adaptive_avg_pool2d adaptive_avg_pool3d "
                "interpolate upsample upsample_nearest upsample_bilinear channel_shuffle unfold fold") +
     _functions("flatten reshape permute transpose swapaxes squeeze unsqueeze chunk split tensor_split unbind "
                "narrow select roll flip movedim sum mean neg avg_pool1d "
                "cumsum unflatten repeat_interleave rot90 tile diff", torch)
     + [operator.getitem, operator.neg], LINEAR),
    (_functions("dropout dropout1d dropout2d dropout3d alpha_dropout feature_alpha_dropout")
     + _functions("stochastic_depth", torchvision.ops), DROPOUT),
    (_functions("dropout dropout_ feature_dropout feature_dropout_ alpha_dropout alpha_dropout_ feature_alpha_dropout "
                "feature_alpha_dropout_", torch),
     EvalOnly(IDENTITY, "drops values at random", _drops, flag="train", signature=_torch_dropout_signature)),
    (_functions("rand randn randint randperm rand_like randn_like randint_like bernoulli normal multinomial poisson "
                "binomial", torch) + _functions("gumbel_softmax"), RANDOM),
    (_functions("cat concat concatenate stack hstack vstack", torch), Offset(positions=(0,), keys=("tensors",))),
    (_functions("add", torch) + [operator.add, operator.iadd], Sum(negate_second=False)),
    (_functions("sub subtract", torch) + [operator.sub, operator.isub], Sum(negate_second=True)),
    (_functions("where", torch), Select()),
    (_functions("pad"), Offset(positions=(3,), keys=("value",))),
    (_functions("mul multiply", torch) + [operator.mul, operator.imul], PRODUCT),
    (_functions("div divide true_divide", torch) + [operator.truediv, operator.itruediv], DIVISION),
    (_functions("matmul mm bmm", torch) + [operator.matmul], MATMUL),
    (_functions("einsum", torch), Einsum()),
]:
    for _fn in _fns:
        FUNCTION_RULES[_fn] = _rule

for _name in ("max_pool1d", "max_pool2d", "max_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
              "adaptive_max_pool3d"):
    _rule = MaxPool(_functional_pool_indices(_name))
    FUNCTION_RULES[getattr(F, _name)] = _rule
    if hasattr(torch, _name):
        FUNCTION_RULES[getattr(torch, _name)] = _rule
    # F.max_pool2d(..., return_indices=True) is traced as this one, which returns (values, indices)
    FUNCTION_RULES[getattr(F, f"{_name}_with_indices")] = MaxPool(_functional_pool_indices(_name), lambda b: True)
for _fn in _functions("max_unpool1d max_unpool2d max_unpool3d"):
    FUNCTION_RULES[_fn] = UNPOOL
FUNCTION_RULES.update({torch.amax: AMAX, torch.amin: AMAX, torch.max: MAX, torch.min: MIN,
                       torch.maximum: MAXIMUM, torch.minimum: MINIMUM})
for _fn, _affine in [(F.batch_norm, _F_BATCH_NORM), (F.instance_norm, _F_INSTANCE_NORM),
                     (F.group_norm, _F_GROUP_NORM), (F.layer_norm, _F_LAYER_NORM), (F.rms_norm, _F_RMS_NORM),
                     (F.normalize, _F_NORMALIZE)]:
    FUNCTION_RULES[_fn] = Norm(_affine)
for _log in (False, True):
    _name = "log_softmax" if _log else "softmax"
    FUNCTION_RULES[getattr(F, _name)] = Norm(_softmax(_log, _bound_dim(_f_softmax_signature)))
    FUNCTION_RULES[getattr(torch, _name)] = FUNCTION_RULES[getattr(torch.special, _name)] = \
        Norm(_softmax(_log, _bound_dim(_torch_softmax_signature)))
def _conv_signature(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """The documented argument list of F.conv1d/2d/3d (builtins carry no signature)."""


def _conv_transpose_signature(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                              dilation=1):
    """The documented argument list of F.conv_transpose1d/2d/3d."""


def _linear_signature(input, weight, bias=None):
    """The documented argument list of F.linear."""


for _fns, _sig in [((F.conv1d, F.conv2d, F.conv3d), _conv_signature),
                   ((F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d), _conv_transpose_signature)]:
    for _fn in _fns:
        FUNCTION_RULES[_fn] = FunctionalAffine(_sig)
FUNCTION_RULES[F.linear] = FunctionalAffine(_linear_signature, dense=True)

#: tensor methods by name (in-place variants map to the same rule; linear passes never run them in place).
METHOD_RULES: dict[str, Rule] = {}
for _names, _rule in [
    ("relu relu_", RELU),
    ("clamp clamp_ clip clip_ abs abs_ hardtanh clamp_min clamp_min_ clamp_max clamp_max_", TANGENT),
    ("sigmoid sigmoid_ tanh tanh_ exp exp_ square square_ exp2 expm1 sqrt sqrt_ rsqrt rsqrt_ reciprocal reciprocal_ "
     "log log_ log1p log2 log10 sin cos atan asinh erf erfc pow pow_ float_power __pow__ __rpow__", SECANT),
    ("var std norm logsumexp", Statistic()),
    ("masked_fill masked_fill_", MaskedFill()),
    ("new_zeros new_ones new_full fill_ zero_", CONSTANT),
    ("new_empty", UNINITIALISED),
    ("bernoulli bernoulli_ normal_ uniform_ exponential_ cauchy_ geometric_ log_normal_ random_ multinomial", RANDOM),
    ("amax amin", AMAX),
    ("max", MAX),
    ("min", MIN),
    ("maximum", MAXIMUM),
    ("minimum", MINIMUM),
    ("view view_as reshape reshape_as permute transpose transpose_ swapaxes flatten unflatten contiguous "
     "squeeze squeeze_ unsqueeze unsqueeze_ expand expand_as repeat chunk split tensor_split unbind narrow select "
     "roll flip movedim sum mean neg neg_ clone float double to type_as __getitem__ cumsum repeat_interleave rot90 "
     "tile diff unfold", LINEAR),
    ("add add_ __add__ __radd__ __iadd__", Sum(negate_second=False)),
    ("sub sub_ __sub__", Sum(negate_second=True)),
    ("__rsub__", OFFSET),
    ("mul mul_ __mul__ __rmul__", PRODUCT),
    ("div div_ true_divide __truediv__", DIVISION),
    ("matmul __matmul__ mm bmm", MATMUL),
]:
    for _name in _names.split():
        METHOD_RULES[_name] = _rule
for _name in ("softmax", "log_softmax"):  # Tensor.softmax(dim, dtype=None): torch.softmax's arguments
    METHOD_RULES[_name] = FUNCTION_RULES[getattr(torch, _name)]


def module_rule(m: nn.Module) -> Rule | None:
    """The rule of a module: that of the nearest type in its MRO that has one, if `forward` is that type's."""
    for cls in type(m).__mro__:
        rule = MODULE_RULES.get(cls)
        if rule is not None:
            return rule if type(m).forward is cls.forward else None
    return None
