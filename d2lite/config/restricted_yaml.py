"""Reading detectron2's YAML config files without running code from them.

detectron2 loads its YAML files with ``yaml.unsafe_load`` so that a value can be
computed by a Python expression, e.g. in ``configs/Base-RetinaNet.yaml``::

    SIZES: !!python/object/apply:eval ["[[x, x * 2**(1.0/3), x * 2**(2.0/3) ] for x in [32, 64, 128, 256, 512 ]]"]

d2lite reads the same files with a safe loader. An ``!!python/object/apply:eval``
expression is parsed (``ast``) and interpreted by :func:`restricted_eval`, which knows
only number literals, list/tuple displays, arithmetic, list comprehensions over those
and a few pure built-ins (``range``, ``int``, ``float``, ...): enough for every file
detectron2 ships, and nothing that can import, call arbitrary functions or read
attributes. Every other ``!!python/...`` tag except ``!!python/tuple`` is rejected. Errors
name the file and the key.
"""

import ast
import math
import operator
from typing import Any, Callable, Dict, List, Optional

import yaml

from d2lite.utils.file_io import PathManager

__all__ = ["RestrictedYAMLError", "restricted_eval", "load_yaml"]


class RestrictedYAMLError(ValueError):
    """A YAML config holds a tag or expression that d2lite refuses to evaluate."""


_MAX_ELEMENTS = 100_000  # list/tuple elements an expression may build in all
_MAX_EXPONENT = 1_000
_MAX_INT_BITS = 4_096

_BINOPS: Dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARYOPS: Dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_COMPARE: Dict[type, Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _checked_range(*args: Any) -> List[int]:
    if not 1 <= len(args) <= 3 or not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
        raise RestrictedYAMLError("range() takes 1 to 3 integers")
    r = range(*args)
    if len(r) > _MAX_ELEMENTS:
        raise RestrictedYAMLError(f"range() of {len(r)} elements is longer than {_MAX_ELEMENTS}")
    return list(r)


def _numbers_only(name: str, fn: Callable, nargs: range) -> Callable:
    def call(*args: Any) -> Any:
        if len(args) not in nargs:
            raise RestrictedYAMLError(f"{name}() takes {nargs.start} to {nargs.stop - 1} arguments")
        if not all(_is_number(a) for a in args):
            raise RestrictedYAMLError(f"{name}() takes numbers only")
        return fn(*args)

    return call


def _sequence_fn(name: str, fn: Callable) -> Callable:
    def call(*args: Any) -> Any:
        if len(args) == 1 and isinstance(args[0], (list, tuple)):
            return fn(args[0])
        if name in ("min", "max") and len(args) > 1:
            return fn(args)
        raise RestrictedYAMLError(f"{name}() takes one list (or, for min/max, several numbers)")

    return call


_FUNCTIONS: Dict[str, Callable] = {
    "range": _checked_range,
    "int": _numbers_only("int", int, range(1, 2)),
    "float": _numbers_only("float", float, range(1, 2)),
    "abs": _numbers_only("abs", abs, range(1, 2)),
    "round": _numbers_only("round", round, range(1, 3)),
    "min": _sequence_fn("min", min),
    "max": _sequence_fn("max", max),
    "sum": _sequence_fn("sum", sum),
    "len": _sequence_fn("len", len),
    "list": _sequence_fn("list", list),
    "tuple": _sequence_fn("tuple", tuple),
}


class _Interpreter:
    """Evaluates the small expression language described in :func:`restricted_eval`."""

    def __init__(self) -> None:
        self.scopes: List[Dict[str, Any]] = []
        self.elements = 0  # list/tuple elements built so far, against _MAX_ELEMENTS

    def charge(self, n: int) -> None:
        self.elements += n
        if self.elements > _MAX_ELEMENTS:
            raise RestrictedYAMLError(f"the expression builds more than {_MAX_ELEMENTS} list elements")

    def run(self, node: ast.AST) -> Any:
        method = getattr(self, "visit_" + type(node).__name__, None)
        if method is None:
            raise RestrictedYAMLError(f"{type(node).__name__} ({ast.unparse(node)!r}) is not allowed")
        return method(node)

    def visit_Expression(self, node: ast.Expression) -> Any:
        return self.run(node.body)

    def visit_Constant(self, node: ast.Constant) -> Any:
        if not _is_number(node.value):
            raise RestrictedYAMLError(f"the literal {node.value!r} is not a number")
        return node.value

    def _elements(self, elts: List[ast.expr]) -> List[Any]:
        if any(isinstance(e, ast.Starred) for e in elts):
            raise RestrictedYAMLError("starred expressions are not allowed")
        self.charge(len(elts))
        return [self.run(e) for e in elts]

    def visit_List(self, node: ast.List) -> Any:
        return self._elements(node.elts)

    def visit_Tuple(self, node: ast.Tuple) -> Any:
        return tuple(self._elements(node.elts))

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Any:
        op = _UNARYOPS.get(type(node.op))
        value = self.run(node.operand)
        if op is None or not _is_number(value):
            raise RestrictedYAMLError(f"{ast.unparse(node)!r}: only + and - of a number are allowed")
        return op(value)

    def visit_BinOp(self, node: ast.BinOp) -> Any:
        op = _BINOPS.get(type(node.op))
        if op is None:
            raise RestrictedYAMLError(f"the operator in {ast.unparse(node)!r} is not allowed")
        left, right = self.run(node.left), self.run(node.right)
        if not (_is_number(left) and _is_number(right)):
            raise RestrictedYAMLError(f"{ast.unparse(node)!r}: arithmetic is allowed on numbers only")
        if op is operator.pow and (
            abs(right) > _MAX_EXPONENT
            or (isinstance(left, int) and isinstance(right, int) and left.bit_length() * right > _MAX_INT_BITS)
        ):
            raise RestrictedYAMLError(f"{ast.unparse(node)!r}: the power is too large")
        try:
            result = op(left, right)
        except (ArithmeticError, ValueError) as e:
            raise RestrictedYAMLError(f"{ast.unparse(node)!r}: {e}") from e
        if isinstance(result, complex) or (isinstance(result, float) and not math.isfinite(result)):
            raise RestrictedYAMLError(f"{ast.unparse(node)!r} is not a finite real number")
        if isinstance(result, int) and result.bit_length() > _MAX_INT_BITS:
            raise RestrictedYAMLError(f"{ast.unparse(node)!r} is an integer of more than {_MAX_INT_BITS} bits")
        return result

    def visit_Compare(self, node: ast.Compare) -> bool:
        left = self.run(node.left)
        for op_node, right_node in zip(node.ops, node.comparators):
            op = _COMPARE.get(type(op_node))
            right = self.run(right_node)
            if op is None or not (_is_number(left) and _is_number(right)):
                raise RestrictedYAMLError(f"{ast.unparse(node)!r}: only <, <=, >, >=, ==, != of numbers are allowed")
            if not op(left, right):
                return False
            left = right
        return True

    def visit_Name(self, node: ast.Name) -> Any:
        for scope in reversed(self.scopes):
            if node.id in scope:
                return scope[node.id]
        raise RestrictedYAMLError(f"the name {node.id!r} is not a comprehension variable")

    def visit_Call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            raise RestrictedYAMLError(
                f"the call {ast.unparse(node)!r} is not allowed; allowed functions: {', '.join(sorted(_FUNCTIONS))}"
            )
        if node.keywords:
            raise RestrictedYAMLError(f"{ast.unparse(node)!r}: keyword arguments are not allowed")
        result = _FUNCTIONS[node.func.id](*self._elements(node.args))
        if isinstance(result, (list, tuple)):
            self.charge(len(result))
        return result

    def visit_ListComp(self, node: ast.ListComp) -> List[Any]:
        out: List[Any] = []
        self._comprehend(node.generators, node.elt, out)
        return out

    def _comprehend(self, generators: List[ast.comprehension], elt: ast.expr, out: List[Any]) -> None:
        if not generators:
            self.charge(1)
            out.append(self.run(elt))
            return
        gen = generators[0]
        if gen.is_async or not isinstance(gen.target, ast.Name):
            raise RestrictedYAMLError("a comprehension may only bind one plain name (`for x in ...`)")
        iterable = self.run(gen.iter)
        if not isinstance(iterable, (list, tuple)):
            raise RestrictedYAMLError(f"{ast.unparse(gen.iter)!r} is not a list, tuple or range()")
        for value in iterable:
            self.scopes.append({gen.target.id: value})
            try:
                if all(self.run(cond) for cond in gen.ifs):
                    self._comprehend(generators[1:], elt, out)
            finally:
                self.scopes.pop()


def restricted_eval(expression: str) -> Any:
    """Evaluate a detectron2 config expression without Python's ``eval``.

    Allowed: int/float literals; list and tuple displays; ``+ - * / // % **`` on
    numbers (unary ``+``/``-`` too); list comprehensions ``[e for x in seq if cond]``
    (nested ones as well) whose conditions compare numbers; and the calls ``range``,
    ``int``, ``float``, ``abs``, ``round``, ``min``, ``max``, ``sum``, ``len``, ``list``,
    ``tuple``. Anything else (strings, attributes, subscripts, other names or calls,
    lambdas, dicts, ...) raises :class:`RestrictedYAMLError`.

    Example: ``restricted_eval("[x * 2 for x in range(3)]") == [0, 2, 4]``.
    """
    if not isinstance(expression, str):
        raise RestrictedYAMLError(f"the expression must be a string, got {type(expression).__name__}")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise RestrictedYAMLError(f"{expression!r} is not a Python expression: {e.msg}") from e
    return _Interpreter().run(tree)


_EVAL_TAG = "tag:yaml.org,2002:python/object/apply:eval"
_TUPLE_TAG = "tag:yaml.org,2002:python/tuple"
_PYTHON_TAG_PREFIX = "tag:yaml.org,2002:python/"


class _Deferred:
    """A tagged YAML value, resolved (or rejected) once its key path is known."""

    def __init__(self, tag: str, args: Any, line: int) -> None:
        self.tag, self.args, self.line = tag, args, line


class _Loader(yaml.SafeLoader):
    """Safe loader that defers ``!!python/...`` tags to :func:`_resolve` instead of failing on them."""


def _construct_deferred(loader: yaml.SafeLoader, node: yaml.Node, tag: Optional[str] = None) -> _Deferred:
    if isinstance(node, yaml.SequenceNode):
        args: Any = loader.construct_sequence(node, deep=True)
    elif isinstance(node, yaml.MappingNode):
        args = loader.construct_mapping(node, deep=True)
    else:
        args = loader.construct_scalar(node)
    return _Deferred(tag or node.tag, args, node.start_mark.line + 1)


_Loader.add_constructor(_EVAL_TAG, _construct_deferred)
_Loader.add_constructor(_TUPLE_TAG, lambda loader, node: tuple(loader.construct_sequence(node, deep=True)))
_Loader.add_multi_constructor(
    _PYTHON_TAG_PREFIX, lambda loader, suffix, node: _construct_deferred(loader, node, _PYTHON_TAG_PREFIX + suffix)
)


def _resolve(obj: Any, path: str, filename: str) -> Any:
    """Replace deferred tags under ``obj`` by their values; errors name ``filename`` and the key."""
    if isinstance(obj, dict):
        return {k: _resolve(v, f"{path}.{k}" if path else str(k), filename) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v, f"{path}[{i}]", filename) for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return tuple(_resolve(v, f"{path}[{i}]", filename) for i, v in enumerate(obj))
    if not isinstance(obj, _Deferred):
        return obj
    where = f"{filename}, line {obj.line}, key {path or '<root>'}"
    short_tag = "!!" + obj.tag[len("tag:yaml.org,2002:") :]
    if obj.tag != _EVAL_TAG:
        raise RestrictedYAMLError(
            f"{where}: the tag {short_tag} is not allowed. d2lite never runs code from a config file; "
            "only !!python/object/apply:eval with a list/number expression (and !!python/tuple) is read."
        )
    if not (isinstance(obj.args, list) and len(obj.args) == 1 and isinstance(obj.args[0], str)):
        raise RestrictedYAMLError(f'{where}: write {short_tag} ["<expression>"] (one string), got {obj.args!r}')
    try:
        return restricted_eval(obj.args[0])
    except RestrictedYAMLError as e:
        raise RestrictedYAMLError(
            f"{where}: refusing to evaluate {obj.args[0]!r}: {e}. d2lite evaluates only number/list "
            "literals, arithmetic and comprehensions over them; write the value as a YAML list instead."
        ) from e


def load_yaml(filename: str) -> Dict[str, Any]:
    """Load one YAML file (no ``_BASE_`` handling) with restricted ``!!python/...`` tags.

    Returns:
        the file's mapping ({} for an empty file).

    Raises:
        RestrictedYAMLError: a rejected tag or expression (naming the file, line and key);
            also when the file is not a mapping or not valid YAML.
    """
    with PathManager.open(filename, "r") as f:
        try:
            data = yaml.load(f, Loader=_Loader)
        except yaml.YAMLError as e:
            raise RestrictedYAMLError(f"{filename} is not a valid YAML config: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RestrictedYAMLError(f"{filename} must hold a mapping of config keys, got {type(data).__name__}")
    return _resolve(data, "", filename)
