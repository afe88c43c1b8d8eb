"""Functions as compile keys: a function's code and its static values key a compile, its arrays are arguments.

`jax.jit(f)` keys its cache on the function object, so a fresh lambda each call (`lambda m: m(ids)`, the natural
way to hand a sweep some inputs) compiles again, and the arrays it closes over are baked into the program as
constants. `lift(fn)` splits a function into a hashable `FunctionKey` (its code, globals, and the values it reaches
that are not arrays) and the arrays it reaches: through its closure, its defaults, the module globals its code
names, a `functools.partial`'s arguments or a bound method's object, following nested functions and pytrees
(lists, dicts, dataclasses, NNX modules). Inside a trace, `key.rebuild(arrays)` is the same function over traced
arrays, so two functions with the same code and static values share one compile whatever arrays they carry.

Non-array values (numbers included) are part of the key by value when hashable, otherwise by identity. Arrays a
function reaches only through another module's globals, or through an object that is not a pytree, stay baked in.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

_ARRAY = object()  # where a lifted array sat in the static values


def _is_array(value: Any) -> bool:
    """Arrays are lifted; numbers (Python's and numpy's scalars) stay static, as a loop bound or a shape needs."""
    return isinstance(value, (jax.Array, np.ndarray))


class _Identity:
    """An unhashable value, keyed by which object it is (the key keeps it alive, so the id is not reused)."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def __hash__(self) -> int:
        return id(self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Identity) and other.value is self.value


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return _Identity(value)
    return value


@dataclasses.dataclass(frozen=True)
class _Node:
    """One value of the function's reach: a nested function (lifted in turn), or a pytree of statics and arrays."""

    kind: str  # "function", "partial", "method", "tree"
    parts: tuple  # per kind, see _lift_value / _rebuild_value


@dataclasses.dataclass(frozen=True, eq=False)
class FunctionKey:
    """The static part of a lifted function: hashable, equal for functions that compute the same given the
    same arrays."""

    root: _Node
    count: int  # how many arrays `rebuild` takes

    def _identity(self) -> tuple:
        return (self.root, self.count)

    def __hash__(self) -> int:
        return hash(self._identity())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FunctionKey) and self._identity() == other._identity()

    def rebuild(self, arrays: Sequence[Any]) -> Callable:
        """The function with `arrays` (traced or concrete) in place of the ones it was lifted from."""
        return _rebuild_value(self.root, iter(arrays))


def lift(fn: Callable) -> tuple[FunctionKey, list[Any]]:
    """`(key, arrays)`: `key.rebuild(arrays)` computes what `fn` computes; equal keys share a compile."""
    arrays: list[Any] = []
    root = _lift_value(fn, arrays, depth=0)
    return FunctionKey(root, len(arrays)), arrays


_MAX_DEPTH = 8  # nested functions followed; deeper ones are keyed by identity


def _lift_value(value: Any, arrays: list[Any], depth: int) -> _Node:
    if isinstance(value, types.FunctionType) and depth < _MAX_DEPTH:
        return _lift_function(value, arrays, depth)
    if isinstance(value, functools.partial) and depth < _MAX_DEPTH:
        parts = (
            _lift_value(value.func, arrays, depth + 1),
            _lift_value(value.args, arrays, depth + 1),
            _lift_value(value.keywords, arrays, depth + 1),
        )
        return _Node("partial", parts)
    if isinstance(value, types.MethodType) and depth < _MAX_DEPTH:
        return _Node(
            "method", (_lift_value(value.__func__, arrays, depth + 1), _lift_value(value.__self__, arrays, depth + 1))
        )
    return _lift_tree(value, arrays, depth)


def _lift_tree(value: Any, arrays: list[Any], depth: int) -> _Node:
    leaves, treedef = jax.tree.flatten(value)
    statics = []
    for leaf in leaves:
        if _is_array(leaf):
            arrays.append(leaf)
            statics.append(_ARRAY)
        elif isinstance(leaf, (types.FunctionType, functools.partial, types.MethodType)) and depth < _MAX_DEPTH:
            statics.append(_lift_value(leaf, arrays, depth + 1))
        else:
            statics.append(_hashable(leaf))
    return _Node("tree", (_hashable(treedef), tuple(statics)))


def _lift_function(fn: types.FunctionType, arrays: list[Any], depth: int) -> _Node:
    code = fn.__code__
    cells = tuple(_lift_value(cell.cell_contents, arrays, depth + 1) for cell in fn.__closure__ or ())
    defaults = _lift_value(fn.__defaults__, arrays, depth + 1)
    kwdefaults = _lift_value(fn.__kwdefaults__, arrays, depth + 1)
    named = sorted(name for name in code.co_names if name in fn.__globals__ and _reaches_array(fn.__globals__[name]))
    lifted_globals = tuple((name, _lift_value(fn.__globals__[name], arrays, depth + 1)) for name in named)
    return _Node(
        "function", (code, _Identity(fn.__globals__), fn.__name__, cells, defaults, kwdefaults, lifted_globals)
    )


def _reaches_array(value: Any) -> bool:
    """Whether a global holds arrays (directly or in a pytree): only those are lifted, the rest stay globals."""
    if isinstance(value, (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType)):
        return False
    try:
        return any(_is_array(leaf) for leaf in jax.tree.leaves(value))
    except Exception:  # an object jax cannot flatten holds no array we could lift
        return False


def _rebuild_value(node: _Node, arrays) -> Any:
    if node.kind == "function":
        code, globals_, name, cells, defaults, kwdefaults, lifted_globals = node.parts
        namespace = globals_.value
        if lifted_globals:
            namespace = dict(namespace)
            namespace.update((n, _rebuild_value(v, arrays)) for n, v in lifted_globals)
        closure = tuple(types.CellType(_rebuild_value(cell, arrays)) for cell in cells) or None
        fn = types.FunctionType(code, namespace, name, _rebuild_value(defaults, arrays), closure)
        fn.__kwdefaults__ = _rebuild_value(kwdefaults, arrays)
        return fn
    if node.kind == "partial":
        func, args, keywords = (_rebuild_value(p, arrays) for p in node.parts)
        return functools.partial(func, *args, **keywords)
    if node.kind == "method":
        func, owner = (_rebuild_value(p, arrays) for p in node.parts)
        return types.MethodType(func, owner)
    treedef, statics = node.parts
    treedef = treedef.value if isinstance(treedef, _Identity) else treedef
    leaves = []
    for static in statics:
        if static is _ARRAY:
            leaves.append(next(arrays))
        elif isinstance(static, _Node):
            leaves.append(_rebuild_value(static, arrays))
        else:
            leaves.append(static.value if isinstance(static, _Identity) else static)
    return jax.tree.unflatten(treedef, leaves)
