"""A safe arithmetic evaluator: parses with ``ast`` and walks only numeric nodes (no ``eval``)."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable

__all__ = ["CalculatorError", "evaluate", "format_number"]

_MAX_EXPRESSION = 1_000
_MAX_EXPONENT = 10_000
_MAX_DIGITS = 300
_MAX_MAGNITUDE = 10**_MAX_DIGITS

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_FUNCTIONS: dict[str, Callable[..., float]] = {
    "sqrt": math.sqrt,
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "log": math.log,
    "exp": math.exp,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}


class CalculatorError(ValueError):
    """The expression is not plain arithmetic, or its value is out of range."""


def evaluate(expression: str) -> float | int:
    """Evaluate an arithmetic expression such as ``"(17 * 23) ^ 2 / 4"``.

    ``^`` means power. Numbers, ``+ - * / // % ** ^``, parentheses, ``pi``, ``e`` and a few
    functions (sqrt, abs, round, min, max, log, exp) are allowed; anything else is refused.

    Raises:
        CalculatorError: With a message fit to show the model.
    """
    if len(expression) > _MAX_EXPRESSION:
        raise CalculatorError(f"expression longer than {_MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression.replace("^", "**"), mode="eval")
    except RecursionError:
        raise CalculatorError("expression nested too deeply") from None
    except SyntaxError:
        raise CalculatorError(f"not an arithmetic expression: {expression!r}") from None
    try:
        return _eval(tree.body)
    except CalculatorError:
        raise
    except RecursionError:
        raise CalculatorError("expression nested too deeply") from None
    except ZeroDivisionError:
        raise CalculatorError("division by zero") from None
    except (OverflowError, ValueError, TypeError) as exc:
        raise CalculatorError(f"cannot compute: {exc}") from None


def _eval(node: ast.expr) -> float | int:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _bounded(node.value)
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        return _bounded(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        arguments = [_eval(arg) for arg in node.args]
        return _bounded(_FUNCTIONS[node.func.id](*arguments))
    raise CalculatorError(f"unsupported syntax: {ast.unparse(node)!r}")


def _check_power(base: float | int, exponent: float | int) -> None:
    """Refuse a power whose result would be out of range, before spending CPU on it."""
    if abs(exponent) > _MAX_EXPONENT:
        raise CalculatorError(f"exponent {exponent} is too large")
    if abs(base) > 1 and exponent > 0 and exponent * math.log10(abs(base)) > _MAX_DIGITS:
        raise CalculatorError("result out of range")


def _bounded(value: float | int) -> float | int:
    if isinstance(value, complex):
        raise CalculatorError("the result is not a real number")
    if isinstance(value, float) and not math.isfinite(value):
        raise CalculatorError("result out of range")
    if abs(value) > _MAX_MAGNITUDE:
        raise CalculatorError("result out of range")
    return value


def format_number(value: float | int) -> str:
    """Render a result the way a person writes it: ``391``, ``0.5``, ``3.3333333333``."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.10g}"
    return str(value)
