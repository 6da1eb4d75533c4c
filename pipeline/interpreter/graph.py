"""Tracing a model into a torch.fx graph, and the `Bound` call that rules work on.

A module whose type has a rule (and whose `forward` is that type's own, e.g. EDSR's MeanShift, a Conv2d
subclass) stays a leaf of the graph; every other user module is traced into, so functional calls
(`F.relu`, `torch.cat`, in-place `+=`, item assignments `x[i] = v`: `setitem`) appear as graph nodes just like module
calls. Calls that may draw random numbers are graph nodes even when made on constants (`_RandomCalls`).
"""
from __future__ import annotations

import inspect
import operator
from typing import Any, Callable

import torch
from torch import fx, nn
from torch.fx.node import map_aggregate

from .errors import UnsupportedOperation


def trace(model: nn.Module, is_leaf: Callable[[nn.Module], bool], is_random: Callable[[str, Any], bool]
          ) -> fx.GraphModule:
    """Symbolically trace `model`; modules for which `is_leaf(m)` holds are kept as single calls, and calls for
    which `is_random(op, target)` holds (op "call_function" with the function, or "call_method" with the tensor
    method's name) are graph nodes even when made on constants (see `_RandomCalls`)."""

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return is_leaf(m) or super().is_leaf_module(m, qualname)

        def proxy(self, node):
            return _Proxy(node, self)

    if is_leaf(model):  # a single layer: trace a container around it, so it stays one call
        model = nn.Sequential(model)
    tracer = Tracer()
    try:
        with _RandomCalls(tracer, is_random):
            graph = tracer.trace(model)
    except Exception as err:  # fx raises many kinds of errors on untraceable Python control flow
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsupportedOperation(
            f"{type(model).__name__} cannot be traced by torch.fx ({first}){_model_line(err)}") from err
    _fields_by_position(graph)
    _item_assignments(graph)
    _follow_in_place(graph, model)
    return fx.GraphModule(model, graph)


class _RandomCalls(torch.overrides.TorchFunctionMode):
    """While tracing: a call that `is_random(op, target)` marks, made on constants only (``torch.randn(1, 3, 8,
    8)``, ``torch.zeros(4).normal_()``, ``F.dropout`` of a constant tensor), becomes a node of the graph, as calls
    on traced values do. torch.fx would run it once, while tracing, and keep that one sample as a constant of the
    graph, where the model draws a new one at every call. Every other call goes on as it would."""

    def __init__(self, tracer: fx.Tracer, is_random: Callable[[str, Any], bool]):
        super().__init__()
        self.tracer, self.is_random = tracer, is_random

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        traced: list = []
        map_aggregate((args, kwargs), lambda a: traced.append(a) if isinstance(a, fx.Proxy) else a)
        name = getattr(func, "__name__", "")
        op, target = ("call_method", name) if getattr(torch.Tensor, name, None) is func else ("call_function", func)
        if traced or not self.is_random(op, target):
            return func(*args, **kwargs)
        return self.tracer.create_proxy(op, target, args, kwargs)


def setitem(tensor: torch.Tensor, index: Any, value: Any) -> torch.Tensor:
    """``tensor[index] = value`` out of place: a copy of `tensor` with `value` written at `index`. The graph records an
    item assignment as a call of this function, which the model makes in place (see `_follow_in_place`)."""
    out = tensor.clone()
    out[index] = value
    return out


class _Proxy(fx.Proxy):
    """A traced value that records item assignments (torch.fx's own proxies refuse them) as calls of `setitem`."""

    def __setitem__(self, index, value):
        self.tracer.create_proxy("call_function", setitem, (self, index, value), {})


#: the fields of torch's (values, indices) results (torch.max / torch.min along a dim, sort, topk, ...)
_FIELDS = {"values": 0, "indices": 1}


def _fields_by_position(graph: fx.Graph) -> None:
    """Read the fields of torch's (values, indices) results by position: `x.max(dim=1).values` becomes
    `x.max(dim=1)[0]`, as linear passes hold such a result as a plain tuple. (A tensor's own `.values` and
    `.indices` are methods, which the graph calls rather than reads.)"""
    for node in graph.nodes:
        if node.op == "call_function" and node.target is getattr and node.args[1] in _FIELDS:
            node.target, node.args = operator.getitem, (node.args[0], _FIELDS[node.args[1]])


def _item_assignments(graph: fx.Graph) -> None:
    """Record an item assignment into a constant (``canvas = torch.ones(1, 4, 8, 8); canvas[:, :2] = h``), which
    torch.fx records as a call of the constant's ``__setitem__``, as one into a traced value is (`setitem`); and read
    each constant once, so that the later uses of the constant read the assignment (`_follow_in_place`), where
    torch.fx reads the constant again."""
    first: dict[str, fx.Node] = {}
    for node in list(graph.nodes):
        if node.op == "get_attr":
            if node.target in first:
                node.replace_all_uses_with(first[node.target])
                graph.erase_node(node)
            else:
                first[node.target] = node
        elif node.op == "call_method" and node.target == "__setitem__":
            node.op, node.target = "call_function", setitem


#: the operator module's in-place forms (``a += b`` on tensors, where torch.fx records them) and item assignments
_IN_PLACE_CALLS = (operator.iadd, operator.isub, operator.imul, operator.itruediv, setitem)


def changes_in_place(node: fx.Node, target: Any) -> bool:
    """Whether a call changes its first argument in place: a tensor method or function whose name ends in one
    underscore (``x.mul_(2)``, ``torch.relu_``), an operator's in-place form, an item assignment (`setitem`), a call
    with ``inplace=True`` (``F.relu(x, inplace=True)``, ``F.leaky_relu(x, 0.2, True)``) or a module built with it
    (``nn.ReLU(inplace=True)``)."""
    if node.op == "call_module":
        return getattr(target, "inplace", False) is True
    if node.op not in ("call_method", "call_function"):
        return False
    name = str(node.target) if node.op == "call_method" else getattr(target, "__name__", "")
    if (name.endswith("_") and not name.endswith("__")) or target in _IN_PLACE_CALLS:
        return True
    try:
        arguments = inspect.signature(target).bind(*node.args, **node.kwargs).arguments
    except (TypeError, ValueError):  # builtins without a signature, calls that do not bind
        arguments = node.kwargs
    return arguments.get("inplace") is True


def _follow_in_place(graph: fx.Graph, root: nn.Module) -> None:
    """Make the uses of a tensor after a call that changes it in place read that call's result, as they do in the
    model: in ``h.mul_(2); return conv(h)`` the conv reads the doubled tensor, although the traced graph's conv
    node names ``h``, and linear passes run every call out of place (so they would give it the tensor before the
    change). Such calls are marked ``node.meta["in_place"]``; a change that reaches other tensors through shared
    memory (a view, a slice, a chunk of the tensor) is refused when the interpreter is recorded."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        target = root.get_submodule(str(node.target)) if node.op == "call_module" else node.target
        if not (node.args and isinstance(node.args[0], fx.Node) and changes_in_place(node, target)):
            continue
        node.meta["in_place"] = True
        at = order[node]
        node.args[0].replace_all_uses_with(node, delete_user_cb=lambda user: order[user] > at)


def uninitialised(model: nn.Module) -> str | None:
    """Why `model` cannot be interpreted yet, naming the layer, if it has a lazy layer (nn.LazyLinear,
    nn.LazyConv2d, ...) whose parameters do not exist yet (interpreting it would make up random weights, and
    change the model); else None."""
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.lazy.LazyModuleMixin) and m.has_uninitialized_params():
            return (f"module {type(m).__name__} at '{name or type(m).__name__}' is a lazy layer whose parameters do "
                    f"not exist yet: run the model once on an input (e.g. model(x0)) or load its weights before "
                    f"interpreting it")
    return None


def _model_line(err: BaseException) -> str:
    """Where in the model's own code tracing failed: " at FILE:LINE: CODE" for the innermost frame outside torch
    and this package (file name only), or "" when there is none."""
    import traceback
    from pathlib import Path

    skip = (Path(torch.__file__).parent, Path(__file__).parents[1])
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if not any(Path(f.filename).is_relative_to(folder) for folder in skip)]
    if not frames:
        return ""
    frame = frames[-1]
    return f" at {Path(frame.filename).name}:{frame.lineno}: {(frame.line or '').strip()}"


def where(node: fx.Node) -> str:
    """A readable location of a graph node: the module path, or the enclosing module path and node name."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    paths = [p for p, *_ in (v if isinstance(v, tuple) else (k,) for k, v in stack.items())]
    path = paths[-1] if paths else ""
    path = path if isinstance(path, str) else ""
    return f"{path}:{node.name}" if path else node.name


def describe(node: fx.Node, target: Any) -> str:
    """What a node calls, for error messages: a module type, a function or a tensor method."""
    if node.op == "call_module":
        return f"module {type(target).__name__}"
    if node.op == "call_method":
        return f"tensor method .{node.target}()"
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None) or repr(target)
    name = name.removeprefix("_VariableFunctionsClass.")  # torch.sort, not torch._VariableFunctionsClass.sort
    module = getattr(target, "__module__", None) or ""
    return f"function {module + '.' if module else ''}{name}"


class Bound:
    """One call of an operation with its arguments, where linear inputs are still graph nodes.

    `args`/`kwargs` hold concrete values for everything static (constants, frozen tensors, sizes) and the
    `fx.Node` itself for each input that depends linearly on x. `values` maps those nodes to the tensors
    of the current pass (x0 activations when recording, perturbations in linear passes).
    """

    __slots__ = ("fn", "args", "kwargs", "values")

    def __init__(self, fn: Callable, args: tuple, kwargs: dict, values: dict):
        self.fn, self.args, self.kwargs, self.values = fn, args, kwargs, values

    def nodes(self) -> list[fx.Node]:
        """The distinct linear input nodes, in argument order."""
        seen: dict[fx.Node, None] = {}
        map_aggregate((self.args, self.kwargs), lambda a: seen.setdefault(a) if isinstance(a, fx.Node) else a)
        return list(seen)

    def input(self) -> torch.Tensor:
        """The value of the single linear input (units, norms, pools act on one tensor)."""
        return self.values[self.nodes()[0]]

    def call(self, values: dict | None = None, args: tuple | None = None, kwargs: dict | None = None):
        """Run the operation with linear nodes replaced by `values` (default: this pass's values)."""
        vals = self.values if values is None else values
        resolve = lambda a: vals[a] if isinstance(a, fx.Node) else a  # noqa: E731
        a = map_aggregate(self.args if args is None else args, resolve)
        k = map_aggregate(self.kwargs if kwargs is None else kwargs, resolve)
        return self.fn(*a, **k)

    def __call__(self):
        return self.call()

    def on(self, node_value: dict) -> "Bound":
        """The same call with other values for its linear nodes."""
        return Bound(self.fn, self.args, self.kwargs, node_value)

    def map_static(self, fn: Callable[[Any], Any], positions=None, keys=()) -> tuple[tuple, dict]:
        """(args, kwargs) with `fn` applied to the static leaves under the given argument positions/keys."""
        def leafwise(a):
            return map_aggregate(a, lambda x: x if isinstance(x, fx.Node) else fn(x))
        args = tuple(leafwise(a) if positions is None or i in positions else a for i, a in enumerate(self.args))
        kwargs = {k: leafwise(v) if positions is None or k in keys else v for k, v in self.kwargs.items()}
        return args, kwargs
