"""`interpret(model, x0)`: the affine network y = F(x0)·x + r(x0) of a model at an input x0.

The model is traced once into a torch.fx graph. Recording runs it on x0 node by node; each node is one of

- *linear*: a tensor that depends on x; its rule (see `rules.py`) records the state of its linear
  interpreter (masks, gains, switches, frozen statistics) and the bias it adds;
- *meta*: a value computed from shapes only (sizes, `dim()`, tensors of constants made from a linear tensor's shape:
  `rules.Constant`), recomputed in every pass;
- *static*: parameters, constants and values frozen at x0 (comparisons, indices), computed once.

Linear passes then replay the graph with each rule's linear part (`forward`: F v) or its adjoint in reverse
order (`transpose`: Fᵀ u). Biases are injected per source to get the contributions Q_i b̂_i, which sum to r.
"""
from __future__ import annotations

import operator
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import fx, nn
from torch.fx.node import map_aggregate

from . import rules
from .errors import InputError, UnsupportedOperation
from .graph import Bound, describe, trace, uninitialised, where

#: sources per batch when contributions or back-projections are computed
SOURCE_BATCH = 16
#: rule kinds of operations that act element by element on one input (normalisations with frozen statistics,
#: activations, identities): they belong to the layer of the weighted operation before them (`continues_layer`).
POINTWISE_KINDS = ("frozen statistics", "tangent", "secant", "identity")


@dataclass
class Site:
    """One linear node: its operation, rule, recorded state and bias."""

    node: fx.Node
    fn: Callable          # what linear passes call (in-place variants replaced by out-of-place ones)
    rule: rules.Rule
    state: Any
    bias: torch.Tensor | None
    shape: Any            # output shape at x0 (torch.Size, or a tuple of them)
    where: str
    op: str = ""          # short name of the operation ("InstanceNorm2d", "tanh", "mul")
    approximation: str | None = None  # None: the rule is the Jacobian here; else its kind (see rules.py)


def _is_float_tensors(x) -> bool:
    if isinstance(x, torch.Tensor):
        return x.is_floating_point()
    return isinstance(x, (tuple, list)) and len(x) > 0 and all(_is_float_tensors(t) for t in x)


def _has_float_tensor(x) -> bool:
    """True when x is, or holds (tuples, named tuples, lists), a floating-point tensor."""
    if isinstance(x, torch.Tensor):
        return x.is_floating_point()
    return isinstance(x, (tuple, list)) and any(_has_float_tensor(t) for t in x)


def _op_name(node: fx.Node, target) -> str:
    """A short name of what a node calls: the module type, the tensor method or the function name."""
    if node.op == "call_module":
        return type(target).__name__
    if node.op == "call_method":
        return str(node.target)
    return getattr(target, "__name__", None) or str(target)


def _tuple_reason(value) -> str:
    """Why a rule-less operation's tuple result (sort, topk, median with dim, ...) cannot be interpreted."""
    if hasattr(value, "values") and hasattr(value, "indices"):
        return ("it returns (values, indices), and values selected by comparing the input's values have no "
                "linear-interpreter rule (for the largest or smallest values use max or min with a dim, amax or "
                "amin; for the indices argmax, argmin or argsort)")
    return "it returns several tensors, some of them floating-point values that depend on the input"


def _shape(x):
    return tuple(_shape(t) for t in x) if isinstance(x, (tuple, list)) else x.shape


def _stand_in(shape, dtype, device, batch: int):
    """Zeros of a linear node's shape at this batch size, expanded from one element (no memory): what the reverse pass
    holds for the node, whose shape alone its rules read (and the calls of its meta values: `rules.Constant` makes real
    tensors of it), or a tuple of them."""
    if isinstance(shape, tuple) and shape and not isinstance(shape[0], int):
        return tuple(_stand_in(s, dtype, device, batch) for s in shape)
    return torch.zeros((), dtype=dtype, device=device).expand(batch, *shape[1:])


#: in-place tensor methods without an out-of-place method of their name, and the function linear passes call instead
_OUT_OF_PLACE_METHODS = {"fill_": torch.full_like, "zero_": torch.zeros_like}


def _out_of_place(node: fx.Node, target):
    """The function linear passes call for a node: in-place variants become out-of-place ones."""
    if node.op == "call_method":
        name = str(node.target)
        if name in _OUT_OF_PLACE_METHODS:
            return _OUT_OF_PLACE_METHODS[name]
        if name.endswith("_") and not name.endswith("__") and hasattr(torch.Tensor, name[:-1]):
            name = name[:-1]
        return getattr(torch.Tensor, name)
    inplace = {"iadd": "add", "isub": "sub", "imul": "mul", "itruediv": "truediv"}
    name = getattr(target, "__name__", "")
    if getattr(target, "__module__", None) == "_operator" and name in inplace:
        return getattr(operator, inplace[name])
    return target


def _rule_for(op: str, target) -> rules.Rule | None:
    """The rule of a call, by its fx `op`: of the module (call_module), the tensor method's name (call_method) or
    the function (call_function) `target`; None if it has none."""
    if op == "call_module":
        return rules.module_rule(target)
    if op == "call_method":
        return rules.METHOD_RULES.get(str(target))
    try:
        return rules.FUNCTION_RULES.get(target)
    except TypeError:  # unhashable target
        return None


class LinearInterpreter:
    """The linear interpreter y = F(x0)·x + r(x0) of a model at x0. Build it with `interpret`.

    Shapes: x0 is (1, C, H, W); `forward` maps (B, C, H, W) -> (B, *out); `transpose` maps back.
    """

    def __init__(self, gm: fx.GraphModule, x0: torch.Tensor):
        self.gm, self.x0 = gm, x0
        self.kind: dict[fx.Node, str] = {}
        self.static: dict[fx.Node, Any] = {}
        self.frozen: set[fx.Node] = set()  # static nodes whose value was computed from x0 (masks, indices)
        self.sites: dict[fx.Node, Site] = {}
        self.nodes = [n for n in gm.graph.nodes if n.op not in ("output",)]
        self.output_node = next(n for n in gm.graph.nodes if n.op == "output")
        self.output = self._record(x0)
        self._last_use = self._last_uses()
        self._names = self._source_names()
        self._residual: torch.Tensor | None = None

    # ---------------------------------------------------------------------------------------------------
    # recording

    def _record(self, x0):
        env: dict[fx.Node, Any] = {}
        live = _LiveStorages(self.nodes, env)
        calls: list[tuple[fx.Node, Bound, rules.Rule | None]] = []
        placeholder_seen = False
        for node in self.nodes:
            if node.op == "placeholder":
                if placeholder_seen:
                    default = node.args[0] if node.args else None
                    self.kind[node], self.static[node] = "static", default
                    continue
                placeholder_seen = True
                self.kind[node], env[node] = "linear", x0
                continue
            if node.op == "get_attr":
                attr = self.gm
                for part in str(node.target).split("."):
                    attr = getattr(attr, part)
                self.kind[node], self.static[node] = "static", attr
                continue
            target = self.gm.get_submodule(node.target) if node.op == "call_module" else node.target
            if node.op == "call_method":
                target = getattr(torch.Tensor, str(node.target))
            args, kwargs = self._pass_args(node, env, self.static)
            rule = _rule_for(node.op, node.target if node.op == "call_method" else target)
            b = Bound(target, args, kwargs, env)
            if rule is not None and (why := rule.refuse(b)):  # random: static, from shapes or from x alike
                raise UnsupportedOperation(f"{describe(node, target)} at '{where(node)}': {why}")
            calls.append((node, b, rule))
            linear_inputs = b.nodes()
            if linear_inputs and node.meta.get("in_place"):
                self._check_shared_memory(node, target, env, live)
            shape_only = rule is not None and rule.shape_only  # zeros_like(h), h.new_full(...), h.zero_(), ...
            if not linear_inputs or shape_only:
                value = rule.record(b)[0] if shape_only else b()
                dependent = linear_inputs or self._depends_on_meta(node)
                self.kind[node] = "meta" if dependent else "static"
                (env if dependent else self.static)[node] = value
                if not dependent and any(n in self.frozen for n in node.all_input_nodes):
                    self.frozen.add(node)
                continue
            if rule is None:
                value = b()
                if isinstance(value, torch.Tensor) and value.is_complex():
                    raise UnsupportedOperation(f"no linear-interpreter rule for {describe(node, target)} at "
                                               f"'{where(node)}': it gives complex values")
                if _is_float_tensors(value):
                    raise UnsupportedOperation(
                        f"no linear-interpreter rule for {describe(node, target)} at '{where(node)}'")
                if _has_float_tensor(value):
                    raise UnsupportedOperation(
                        f"no linear-interpreter rule for {describe(node, target)} at '{where(node)}': "
                        f"{_tuple_reason(value)}")
                self._freeze(node, value, env)
                continue
            try:
                value, state, bias = rule.record(b)
            except UnsupportedOperation as err:
                raise UnsupportedOperation(f"{describe(node, target)} at '{where(node)}': {err}") from None
            if not _has_float_tensor(value):  # (values, indices) of max along a dim: linear, its indices static
                self._freeze(node, value, env)
                continue
            values = value if isinstance(value, (tuple, list)) else [value]
            if any(isinstance(v, torch.Tensor) and v.dim() and v.shape[0] != 1 for v in values):
                raise UnsupportedOperation(
                    f"{describe(node, target)} at '{where(node)}' mixes the batch dimension")
            if any(isinstance(v, torch.Tensor) and v.dim() == 0 for v in values):  # y.mean(), y.sum(), y[0, 0, 0, 0]
                raise UnsupportedOperation(
                    f"{describe(node, target)} at '{where(node)}' gives a scalar of the whole batch; keep the batch "
                    f"dimension (e.g. y.mean(dim=(1, 2, 3), keepdim=True))")
            self.kind[node], env[node] = "linear", value
            self.sites[node] = Site(node, _out_of_place(node, target), rule, state, bias, _shape(value),
                                    where(node), _op_name(node, target), rule.approximation(state))
        self._check_written(calls, env)
        out = self.output_node.args[0]
        if not isinstance(out, fx.Node) or self.kind.get(out) != "linear" or not isinstance(env[out], torch.Tensor):
            found = self.static.get(out, env.get(out)) if isinstance(out, fx.Node) else None
            integer = isinstance(found, torch.Tensor) and not found.is_floating_point()
            dtype = str(found.dtype).replace("torch.", "") if integer else ""
            why = f": its values are {dtype} (from '{where(out)}'), not floating-point" if integer else ""
            raise UnsupportedOperation(f"the model's output must be one tensor that depends on its input{why}")
        return env[out].detach()

    def _check_shared_memory(self, node, target, env, live: "_LiveStorages"):
        """Refuse a call that changes a tensor in place (see `graph.changes_in_place`) when another tensor that is
        used after it shares that memory (a view, slice or chunk of it, or the tensor it is a view of): the model
        reads the changed values there, which linear passes, running every call out of place, would not give.
        (Later uses of the changed tensor itself read the call's result: `graph._follow_in_place`.)"""
        changed = env.get(node.args[0])
        if not isinstance(changed, torch.Tensor):
            return
        other = live.sharing(node, changed)
        if other is not None:
            raise UnsupportedOperation(
                f"{describe(node, target)} at '{where(node)}' changes in place a tensor that shares memory "
                f"with '{where(other)}', which is used afterwards (a view, slice or chunk of the same "
                f"tensor): use the out-of-place form")

    def _check_written(self, calls: list[tuple[fx.Node, Bound, "rules.Rule | None"]], env: dict) -> None:
        """Refuse a model that reads elements of a tensor allocated without values (torch.empty, empty_like, new_empty:
        `rules.Uninitialised`) before it writes them: it reads garbage there (recording held zeros). `calls`: (node, its
        call, its rule) in graph order, with the values of every node in `env` or `self.static`.

        Item assignments write the elements they index (`Rule.writes`); calls whose values come from shapes and
        constants (fill_, zero_, zeros_like: `Rule.shape_only`) write every element; indexing (``x[:, :c]``) keeps the
        unwritten elements of the part it takes; a call whose result is not a tensor (x.shape, x.size(1)) reads none.
        Every other call that takes such a tensor reads its unwritten elements, and so does the model's output."""
        # node -> (True where its value was never written, the allocation it comes from)
        unwritten: dict[fx.Node, tuple[torch.Tensor, fx.Node]] = {}
        for node, b, rule in calls:
            value = env[node] if node in env else self.static.get(node)
            if rule is not None and rule.uninitialised:
                unwritten[node] = torch.ones(value.shape, dtype=torch.bool, device=value.device), node
                continue
            read = [a for a in node.all_input_nodes if a in unwritten]
            if not read or (rule is not None and rule.shape_only) or not isinstance(value, torch.Tensor):
                continue
            mask, allocation = unwritten[read[0]]
            index = rule.writes(b) if rule is not None else None
            if read == [node.args[0]] and index is not None:
                mask = mask.clone()
                mask[index] = False
            elif read == [node.args[0]] and node.target in (operator.getitem, "__getitem__"):
                mask = mask[b.args[1]]
            else:
                raise UnsupportedOperation(f"{describe(node, b.fn)} at '{where(node)}' reads {_garbage(allocation)}")
            if mask.any():
                unwritten[node] = mask, allocation
        out = self.output_node.args[0]
        if out in unwritten:
            raise UnsupportedOperation(f"the model's output holds {_garbage(unwritten[out][1])}")

    def _freeze(self, node, value, env):
        """Non-float results of linear inputs (comparisons, indices) are frozen at x0; sizes are meta."""
        if isinstance(value, torch.Tensor) or (isinstance(value, (tuple, list)) and value
                                               and all(isinstance(v, torch.Tensor) for v in value)):
            self.kind[node], self.static[node] = "static", value
            self.frozen.add(node)
        else:
            self.kind[node], env[node] = "meta", value

    def _depends_on_meta(self, node) -> bool:
        found = []
        map_aggregate((node.args, node.kwargs),
                      lambda a: found.append(a) if isinstance(a, fx.Node) and self.kind.get(a) == "meta" else a)
        return bool(found)

    def _last_uses(self) -> dict[fx.Node, list[fx.Node]]:
        """For each node, the linear/meta values whose last use it is (to free them in passes)."""
        last: dict[fx.Node, fx.Node] = {}
        for node in self.nodes + [self.output_node]:
            map_aggregate((node.args, node.kwargs),
                          lambda a: last.__setitem__(a, node) if isinstance(a, fx.Node) else a)
        frees: dict[fx.Node, list[fx.Node]] = {}
        for value, user in last.items():
            frees.setdefault(user, []).append(value)
        return frees

    def _source_names(self) -> "OrderedDict[str, fx.Node]":
        names: OrderedDict[str, fx.Node] = OrderedDict()
        for node, site in self.sites.items():
            if site.bias is None:
                continue
            what = {"affine": "bias", "frozen statistics": "shift", "offset": "offset",
                    "tangent": "offset", "secant": "offset", "product": "constant", "statistic": "constant",
                    "switches": "offset"}.get(site.rule.kind, "bias")
            name, k = f"{site.where} ({what})", 2
            while name in names:
                name, k = f"{site.where} ({what} #{k})", k + 1
            names[name] = node
        return names

    # ---------------------------------------------------------------------------------------------------
    # passes

    def _forward(self, v, inject=None, sites=None, statics=None, method="linear", observe=None):
        """Replay the graph on perturbations v (B, ...) with each rule's `method` ("linear" or "support").

        `inject`: node -> (B,) weights of its bias; `sites`/`statics`: cropped copies (windows);
        `observe(node, value)` is called on every linear node's value.
        """
        sites = self.sites if sites is None else sites
        statics = self.static if statics is None else statics
        env: dict[fx.Node, Any] = {}
        batch = v.shape[0]
        for node in self.nodes:
            kind = self.kind[node]
            if kind == "static":
                continue
            if node.op == "placeholder":
                env[node] = v
            else:
                args, kwargs = self._pass_args(node, env, statics)
                site = sites.get(node)
                if kind == "meta":
                    env[node] = Bound(_out_of_place(node, self._target(node)), args, kwargs, env)()
                else:
                    b = Bound(site.fn, args, kwargs, env)
                    out = getattr(site.rule, method)(b, site.state)
                    if out is None:
                        out = torch.zeros((batch, *site.shape[1:]), dtype=v.dtype, device=v.device)
                    elif method == "support":  # 0/1 indicators: no overflow, underflow or NaN over depth
                        out = _indicator(out)
                    if inject is not None and node in inject and site.bias is not None:
                        w = inject[node].reshape(-1, *([1] * (out.dim() - 1)))
                        out = out + w * site.bias
                    env[node] = out
                    if observe is not None:
                        observe(node, out)
            for dead in self._last_use.get(node, ()):
                if dead is not node and dead is not self.output_node.args[0]:
                    env.pop(dead, None)
        return env[self.output_node.args[0]]

    def _target(self, node):
        if node.op == "call_module":
            return self.gm.get_submodule(node.target)
        return node.target

    def _pass_args(self, node, env, statics):
        """Node arguments with static and meta values filled in; linear inputs stay graph nodes."""
        def fill(a):
            if not isinstance(a, fx.Node):
                return a
            kind = self.kind[a]
            return a if kind == "linear" else (env[a] if kind == "meta" else statics[a])
        return map_aggregate(node.args, fill), map_aggregate(node.kwargs, fill)

    def _transpose(self, u, add=None):
        """Reverse pass: Fᵀ u for u (B, *out). `add`: node -> (B, *node's shape) cotangent added at that node's
        output (then transposed through it and everything before it)."""
        batch, dtype, device = u.shape[0], u.dtype, u.device
        env: dict[fx.Node, Any] = {}
        for node in self.nodes:  # shapes of this batch size, and meta values computed from them
            kind = self.kind[node]
            if kind == "linear":
                shape = self.x0.shape if node.op == "placeholder" else self.sites[node].shape
                env[node] = _stand_in(shape, dtype, u.device, batch)
            elif kind == "meta":
                args, kwargs = self._pass_args(node, env, self.static)
                env[node] = Bound(_out_of_place(node, self._target(node)), args, kwargs, env)()
        cot: dict[fx.Node, Any] = {self.output_node.args[0]: u}
        result = None
        for node in reversed(self.nodes):
            if self.kind[node] != "linear":
                continue
            c = cot.pop(node, None)
            if add is not None and node in add:
                c = add[node] if c is None else c + add[node]
            if c is None:
                continue
            if node.op == "placeholder":
                result = c
                continue
            site = self.sites[node]
            args, kwargs = self._pass_args(node, env, self.static)
            grads = site.rule.transpose(Bound(site.fn, args, kwargs, env), site.state, c)
            for n, g in grads.items():
                if g is None:
                    continue
                prev = cot.get(n)
                cot[n] = g if prev is None else _add(prev, g)
        if result is None:
            result = torch.zeros((batch, *self.x0.shape[1:]), dtype=dtype, device=device)
        return result

    # ---------------------------------------------------------------------------------------------------
    # public API

    def forward(self, v: torch.Tensor, differentiable: bool = False) -> torch.Tensor:
        """F v for a batch v of shape (B, C, H, W) -> (B, *out). No biases.

        With `differentiable`, autograd records the pass: gradients reach v and the model's weights through
        each rule's linear part, the state recorded at x0 (masks, gains, switches, frozen statistics) held
        constant (a loss on the columns themselves, as in `pipeline.training.tasks.FlatColumns`).
        """
        self._check(v, self.x0.shape[1:], "forward")
        with torch.set_grad_enabled(differentiable):
            return self._forward(v)

    def transpose(self, u: torch.Tensor) -> torch.Tensor:
        """Fᵀ u for a batch u of shape (B, *out) -> (B, C, H, W): the exact adjoint of `forward`."""
        self._check(u, self.output.shape[1:], "transpose")
        with torch.no_grad():
            return self._transpose(u)

    def affine(self, v: torch.Tensor) -> torch.Tensor:
        """g(v) = F v + r: the frozen affine network, with every bias (g(x0) = f(x0))."""
        self._check(v, self.x0.shape[1:], "affine")
        ones = torch.ones(v.shape[0], dtype=v.dtype, device=v.device)
        with torch.no_grad():
            return self._forward(v, inject={n: ones for n in self._names.values()})

    @property
    def residual(self) -> torch.Tensor:
        """r(x0), shape (1, *out): every bias forward-projected at once (g(0) of the frozen affine network),
        so that F x0 + r = f(x0). Computed on first use (one pass)."""
        if self._residual is None:
            self._residual = self.affine(torch.zeros_like(self.x0))
        return self._residual

    @property
    def receptive_radius(self) -> int | None:
        """How far (input pixels) a column of F can reach from its pixel; None for global networks."""
        if not hasattr(self, "_radius"):
            from .window import receptive_radius
            self._radius = receptive_radius(self)
        return self._radius

    def window(self, box):
        """The frozen linear network cropped around the input tile `box` = (top, left, height, width).

        Returns a `Window` (see `window.py`) whose `forward` gives, for inputs supported in the tile, the
        output over `Window.out_box` exactly as `forward` on the whole image would.
        """
        from .window import make_window
        return make_window(self, box)

    @property
    def approximations(self) -> list[dict]:
        """Where the interpreter is not the Jacobian at x0: [{"op", "where", "kind"}], in network order; kind is
        "secant" (a smooth unit), "frozen-statistics" (a normalisation's statistics from the input, frozen)
        or "frozen-factor" (a product of two input-dependent factors, one frozen at x0)."""
        return [{"op": s.op, "where": s.where, "kind": s.approximation}
                for s in self.sites.values() if s.approximation]

    @property
    def jacobian_exact(self) -> bool:
        """True when every rule used is the Jacobian of its operation at x0 (piecewise-linear networks):
        then F(x0) is the Jacobian of the model at x0."""
        return not self.approximations

    @property
    def sources(self) -> list[str]:
        """Names of the bias sources, in network order."""
        return list(self._names)

    def bias(self, name: str) -> torch.Tensor:
        """The bias b̂ of one source, at its node (broadcastable to the node's output, batch 1)."""
        return self.source_site(name).bias

    def source_site(self, name: str) -> Site:
        """The linear node (`Site`: graph node, rule, recorded state) whose bias is the source `name`."""
        return self.sites[self._names[name]]

    def contributions(self) -> "OrderedDict[str, torch.Tensor]":
        """name -> Q_i b̂_i, shape (1, *out): each bias source forward-projected to the output.

        In network order; the values sum to `residual`.
        """
        return self._per_source(lambda nodes: self._forward(*self._bias_rows(nodes)))

    def backprojections(self) -> "OrderedDict[str, torch.Tensor]":
        """name -> P_i b̂_i, shape (1, C, H, W): each source's masked bias back-projected to the input (eq. 9–10).

        b̂_i is the source's bias carried to the output of its layer (`layer_end`) through the pointwise
        operations that follow it there: a conv bias through the batch norm's gain and the unit's mask or
        secant gain, the paper's A_n b_n + c_n. P_i is the transpose of the map from the input to that output
        (Ŵ_1ᵀ⋯Ŵ_iᵀ, with Ŵ_i = A_i W_i: the unit's gain acts again on the way back). Same names and order as
        `contributions`; the sources of one layer add up to the layer's P_n b̂_n.
        """
        return self._per_source(self._backproject)

    def layer_end(self, node: fx.Node) -> fx.Node:
        """The output of `node`'s layer: the last of the pointwise operations (`continues_layer`) that follow
        `node` in a chain, each the only linear user of the one before; `node` itself if none does."""
        while True:
            users = [u for u in node.users if self.kind.get(u) == "linear"]
            if len(users) != 1 or not self.continues_layer(users[0]):
                return node
            node = users[0]

    def continues_layer(self, node: fx.Node) -> bool:
        """True for a pointwise operation (`POINTWISE_KINDS`) on a single linear input: the paper's layer
        y_n = W_n x + b_n, x_n = h(y_n) takes it in after the operation that computes that input."""
        return self.sites[node].rule.kind in POINTWISE_KINDS and len(self.linear_inputs(node)) == 1

    def linear_inputs(self, node: fx.Node) -> list[fx.Node]:
        """The inputs of `node` that depend on x."""
        return [a for a in node.all_input_nodes if self.kind.get(a) == "linear"]

    def _backproject(self, nodes: list[fx.Node]) -> torch.Tensor:
        """P_i b̂_i for the sources at `nodes`, one per row: (B, C, H, W)."""
        ends = [self.layer_end(n) for n in nodes]
        at_end: dict[fx.Node, torch.Tensor] = {}
        self._forward(*self._bias_rows(nodes),
                      observe=lambda node, value: at_end.__setitem__(node, value) if node in ends else None)
        cotangents: dict[fx.Node, torch.Tensor] = {}
        for row, end in enumerate(ends):  # row i keeps its own source's masked bias only
            cotangents.setdefault(end, torch.zeros_like(at_end[end]))[row] = at_end[end][row]
        u = torch.zeros((len(nodes), *self.output.shape[1:]), dtype=self.output.dtype, device=self.output.device)
        return self._transpose(u, add=cotangents)

    def _bias_rows(self, nodes: list[fx.Node]):
        """(zeros of shape (B, *x0), node -> (B,) weights): row i of a forward pass carries the bias of nodes[i]
        alone."""
        eye = torch.eye(len(nodes), dtype=self.x0.dtype, device=self.x0.device)
        z = torch.zeros((len(nodes), *self.x0.shape[1:]), dtype=self.x0.dtype, device=self.x0.device)
        return z, {node: eye[:, i] for i, node in enumerate(nodes)}

    def _per_source(self, run: Callable) -> "OrderedDict[str, torch.Tensor]":
        """name -> row of `run(nodes)` (a (B, ...) batch, row i for nodes[i]), over the sources in batches."""
        names = list(self._names)
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        with torch.no_grad():
            for start in range(0, len(names), SOURCE_BATCH):
                chunk = names[start:start + SOURCE_BATCH]
                values = run([self._names[n] for n in chunk])
                for i, n in enumerate(chunk):
                    out[n] = values[i:i + 1]
        return out

    def _check(self, t, shape, what):
        """A batch (B, *shape) in the interpreter's dtype and on its device (those of x0), else ``InputError``."""
        if not isinstance(t, torch.Tensor) or t.dim() != len(shape) + 1 or tuple(t.shape[1:]) != tuple(shape):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise InputError(f"{what} expects a batch of shape (B, {', '.join(map(str, shape))}), got {got}")
        if (t.dtype, t.device) != (self.x0.dtype, self.x0.device):
            raise InputError(f"{what} expects {self.x0.dtype} on {self.x0.device} (those of x0), got {t.dtype} on "
                             f"{t.device}: .to(li.x0)")


class _LiveStorages:
    """The values recorded so far (`env`, filled in graph order) that are used later, indexed by the storage of
    their tensors, so that finding what an in-place call may change through shared memory takes time in the values
    on that storage, not in all values. Built as recording reaches each in-place call; a value whose last use is
    passed leaves the index (recording only moves forward)."""

    def __init__(self, nodes: list[fx.Node], env: dict):
        self.nodes, self.env = nodes, env
        self.position = {n: i for i, n in enumerate(nodes)}
        self.indexed = 0  # nodes[:indexed] are in the index (those with values in env)
        self.by_storage: dict[int, list[tuple[int, fx.Node, torch.Tensor]]] = {}

    def sharing(self, node: fx.Node, changed: torch.Tensor) -> fx.Node | None:
        """The first node before `node` (in graph order), other than its first argument, whose value may share
        elements with `changed` (see `_overlaps`) and that is used after `node`; None if none is."""
        if changed.numel() == 0:
            return None
        at = self.position[node]
        self._index(at)
        key = changed.untyped_storage().data_ptr()
        entries = [e for e in self.by_storage.get(key, ()) if e[0] > at]
        self.by_storage[key] = entries
        for _, other, t in entries:
            if other is not node.args[0] and _overlaps(changed, t):
                return other
        return None

    def _index(self, end: int) -> None:
        """Add the values of nodes[indexed:end] that are used later than `end` - 1, each with its last use."""
        unused = len(self.position)  # the output node: used after every other
        for other in self.nodes[self.indexed:end]:
            if other not in self.env:
                continue
            last = max((self.position.get(u, unused) for u in other.users), default=-1)
            value = self.env[other]
            for t in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(t, torch.Tensor) and t.numel() and last >= end:
                    self.by_storage.setdefault(t.untyped_storage().data_ptr(), []).append((last, other, t))
        self.indexed = max(self.indexed, end)


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors may share elements: the same storage and intersecting ranges of bytes (conservative:
    two interleaved slices count as overlapping)."""
    if a.numel() == 0 or b.numel() == 0 or a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False

    def span(t):
        first = t.storage_offset() * t.element_size()
        last = first + (sum((n - 1) * s for n, s in zip(t.shape, t.stride())) + 1) * t.element_size()
        return first, last
    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1


def _indicator(x):
    """1 where x is non-zero (NaN included), else 0, in x's dtype; tuples element-wise."""
    if isinstance(x, (tuple, list)):
        return type(x)(_indicator(t) for t in x)
    return (x != 0).to(x.dtype)


def _add(a, b):
    if isinstance(a, (tuple, list)):
        return type(a)(_add(x, y) for x, y in zip(a, b))
    return a + b


def _garbage(allocation: fx.Node) -> str:
    """What a read of never-written elements of a tensor allocated at `allocation` reads (`_check_written`)."""
    return (f"elements of the tensor allocated at '{where(allocation)}' that were never written (torch.empty, "
            f"empty_like and new_empty allocate memory without setting it: garbage); write every element before "
            f"reading it, or allocate with torch.zeros_like or new_zeros")


def _is_leaf(m: nn.Module) -> bool:
    return rules.module_rule(m) is not None


def _is_random(op: str, target) -> bool:
    """Whether calls of `target` may draw random numbers (`rules.Rule.random`): `op` and `target` as `_rule_for`'s."""
    rule = _rule_for(op, target)
    return rule is not None and rule.random


def _input_channels(gm: fx.GraphModule) -> int | None:
    """The input channels that a convolution reading the model's input itself expects, from its weight (a lazy
    one loaded from a state dict keeps in_channels 0); None when none does (the input goes first through a
    PixelUnshuffle, a concatenation with a noise map, a linear layer, ...: the model's own call then decides)."""
    x = next(n for n in gm.graph.nodes if n.op == "placeholder")
    for user in x.users:
        m = gm.get_submodule(str(user.target)) if user.op == "call_module" else None
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            return m.weight.shape[1] * m.groups
        if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            return m.weight.shape[0]
    return None


def _check_traced_output(model: nn.Module, x0: torch.Tensor, traced: torch.Tensor) -> None:
    """Refuse a model whose own output at x0 is not its traced graph's: torch.fx records ``a += b`` as
    ``a = a + b``, so a tensor that another name also refers to keeps its old values in the graph; forward hooks
    do not run in it. (Within float rounding: oneDNN and cuDNN may sum in another order.)"""
    y = model(x0.clone())
    if not isinstance(y, torch.Tensor) or y.shape != traced.shape:
        return  # the graph's own checks decide (one tensor that depends on the input)
    tol = {torch.float64: 1e-9, torch.float32: 1e-4}.get(y.dtype, 1e-2) * float(y.abs().max().clamp_min(1e-30))
    err = float((y - traced).abs().max())
    if err > tol:
        raise UnsupportedOperation(
            f"{type(model).__name__}'s output at x0 differs from that of its torch.fx graph (max |difference| "
            f"{err:.3g}): an in-place `a += b` on a tensor that another name also refers to (torch.fx records it as "
            f"`a = a + b`), or a forward hook; write `a = a + b`")


@contextmanager
def _left_as_it_was(model: nn.Module):
    """Run a block that calls `model` (recording it, checking its output) and leave the model's state as it was:
    a module in training mode updates buffers when called (BatchNorm's running statistics and
    num_batches_tracked, InstanceNorm's with track_running_stats, spectral norm's power-iteration vectors).

    Buffers changed in place get their values back from copies, bit for bit; buffers replaced, added or removed are
    put back. Buffers not changed are not written (their version counters stay, so autograd graphs that saved them
    stay valid; a buffer holding NaN, unequal to itself, is written back). Parameters are not copied (that would
    copy every weight on each call): the engine never writes them, and a model whose own call changes one in place
    is refused (that change is the model's, and stays)."""
    modules = list(model.named_modules())
    buffers = [dict(m._buffers) for _, m in modules]
    parameters = [dict(m._parameters) for _, m in modules]
    with torch.no_grad():
        saved = [{k: (t._version, t.clone()) for k, t in b.items() if t is not None} for b in buffers]
    versions = [{k: p._version for k, p in ps.items() if p is not None} for ps in parameters]
    try:
        yield
    finally:
        for (_, m), before, copies, params in zip(modules, buffers, saved, parameters):
            for held, was in ((m._buffers, before), (m._parameters, params)):
                if held.keys() != was.keys() or any(held[k] is not t for k, t in was.items()):
                    held.clear()
                    held.update(was)
            with torch.no_grad():
                for k, (version, copy) in copies.items():  # (BatchNorm's kernel leaves the version as it was)
                    if before[k]._version != version or not torch.equal(before[k], copy):
                        before[k].copy_(copy)
    changed = [f"{prefix + '.' if prefix else ''}{k}" for (prefix, _), params, was in zip(modules, parameters, versions)
               for k, p in params.items() if p is not None and p._version != was[k]]
    if changed:
        raise UnsupportedOperation(
            f"calling {type(model).__name__} changed its parameter '{changed[0]}' in place (a change of the model's "
            f"own, which stays): a model that changes its weights when called has no fixed linear interpreter")


#: traced graphs per model and mode, so that interpreting many inputs traces each model once
_TRACED: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _traced(model: nn.Module) -> fx.GraphModule:
    modes = tuple(m.training for m in model.modules())
    cache = _TRACED.setdefault(model, {})
    if modes not in cache:
        cache.clear()
        cache[modes] = trace(model, _is_leaf, _is_random)
    return cache[modes]


def interpret(model: nn.Module, x0: torch.Tensor, eval_mode: bool = True) -> LinearInterpreter:
    """The linear interpreter of `model` at `x0` (a float tensor of shape (1, C, H, W)).

    With `eval_mode` (default) the model is put into eval mode while it is traced and recorded, and its
    modes are restored afterwards; without it, the model's own modes are used (BatchNorm in train mode
    then freezes the batch statistics of x0, as the model's own call in train mode normalises with them; dropout in
    train mode, random, is refused). The model is left as it was, its buffers included (running statistics that a
    call in train mode updates get their values back).
    """
    if not isinstance(x0, torch.Tensor):
        raise InputError(f"x0 must be a torch tensor (1, C, H, W), got {type(x0).__name__}"
                         + (" (torch.from_numpy(x0))" if type(x0).__module__ == "numpy" else ""))
    if not x0.is_floating_point():
        raise InputError(f"x0 must be a floating-point tensor, got {x0.dtype}")
    if x0.dim() != 4 or x0.shape[0] != 1:
        raise InputError(f"x0 must have shape (1, C, H, W), got {tuple(x0.shape)}")
    weights = {t.dtype for t in model.parameters() if t.is_floating_point()}
    if weights and x0.dtype not in weights:
        raise InputError(f"x0 is {x0.dtype} and the model's parameters {', '.join(map(str, sorted(weights, key=str)))}"
                         f": give both one precision (x0.to(dtype) or model.to(dtype))")
    if (why := uninitialised(model)) is not None:
        raise UnsupportedOperation(why)
    modes = {m: m.training for m in model.modules()}
    if eval_mode:
        model.eval()
    try:
        gm = _traced(model)
        channels = _input_channels(gm)
        if channels is not None and channels != x0.shape[1]:
            raise InputError(f"{type(model).__name__} expects {channels} input channels, x0 has {x0.shape[1]}")
        x0 = x0.detach().clone(memory_format=torch.contiguous_format)  # as linear passes lay out their batches
        with torch.no_grad(), _left_as_it_was(model):
            li = LinearInterpreter(gm, x0)
            if not any(m.training for m in model.modules()):  # (in training mode a second call would differ)
                _check_traced_output(model, x0, li.output)
        return li
    finally:
        for m, mode in modes.items():
            m.training = mode
