"""The built-in calculator: exact arithmetic, and a refusal for everything else (never ``eval``)."""

from __future__ import annotations

import ast
import inspect
import time

import pytest
from stepbus_tool_executor import calculator
from stepbus_tool_executor.calculator import CalculatorError, evaluate, format_number


def calc(expression: str) -> str:
    """What the calculator tool shows the model for ``expression``."""
    return format_number(evaluate(expression))


# -- results ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("17 * 23", "391"),
        ("2 + 3 * 4", "14"),
        ("(2 + 3) * 4", "20"),
        ("10 - 4 - 3", "3"),
        ("100 / 10 / 5", "2"),
        ("7 // 2", "3"),
        ("7 % 3", "1"),
    ],
)
def test_operators_follow_arithmetic_precedence(expression: str, expected: str) -> None:
    assert calc(expression) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("2 ^ 10", "1024"),
        ("2 ** 10", "1024"),
        ("2 ^ 3 ^ 2", "512"),  # right-associative, like **
        ("(17 * 23) ^ 2 / 4", "38220.25"),
    ],
)
def test_caret_means_power(expression: str, expected: str) -> None:
    assert calc(expression) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [("-5 + 3", "-2"), ("-(2 + 3)", "-5"), ("--4", "4"), ("-2 ^ 2", "-4"), ("+7", "7")],
)
def test_unary_signs(expression: str, expected: str) -> None:
    assert calc(expression) == expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 / 2", "0.5"),
        ("1 / 3", "0.3333333333"),
        ("10 / 4", "2.5"),
        ("782 / 2", "391"),  # an integral float prints without ".0"
        ("sqrt(16)", "4"),
        ("0.1 + 0.2", "0.3"),  # ten significant digits hide binary noise
        ("12345678901234567890 + 0", "12345678901234567890"),  # ints stay exact
    ],
)
def test_results_are_formatted_as_a_person_writes_them(expression: str, expected: str) -> None:
    assert calc(expression) == expected


def test_constants_and_functions_are_available() -> None:
    assert calc("round(pi, 2)") == "3.14"
    assert calc("max(3, 9, 4) - min(3, 9, 4)") == "6"
    assert calc("abs(-391)") == "391"
    assert calc("log(e)") == "1"


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os')",
        "__import__('os').system('true')",
        "().__class__",
        "(1).__class__.__bases__",
        "open('x')",
        "x",
        "print(1)",
        "sqrt.__call__(4)",
        "sqrt(x=4)",
        "'a' * 3",
        "True + 1",
        "1 if 1 else 2",
        "1 < 2",
    ],
)
def test_names_attributes_and_calls_outside_the_allowlist_are_refused(expression: str) -> None:
    with pytest.raises(CalculatorError, match="unsupported syntax"):
        evaluate(expression)


@pytest.mark.parametrize("expression", ["lambda: 1", "(lambda x: x)(1)"])
def test_lambdas_are_refused(expression: str) -> None:
    with pytest.raises(CalculatorError, match="unsupported syntax"):
        evaluate(expression)


@pytest.mark.parametrize(
    "expression",
    ["[x for x in (1, 2)]", "sum(x for x in (1, 2))", "{x: 1 for x in (1,)}", "max([1, 2])"],
)
def test_comprehensions_and_containers_are_refused(expression: str) -> None:
    with pytest.raises(CalculatorError, match="unsupported syntax"):
        evaluate(expression)


@pytest.mark.parametrize("expression", ["9**9**9", "9 ^ 9 ^ 9", "2 ** 10001", "10 ** -10001"])
def test_huge_exponents_are_refused_before_computing(expression: str) -> None:
    started = time.perf_counter()
    with pytest.raises(CalculatorError, match=r"exponent .* too large"):
        evaluate(expression)
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize("expression", ["2 ** 10000", "10 ** 301", "2.0 ** 10000", "exp(1000)"])
def test_results_out_of_range_are_refused(expression: str) -> None:
    with pytest.raises(CalculatorError):
        evaluate(expression)


@pytest.mark.parametrize("expression", ["1 / 0", "5 // 0", "5 % 0", "1 / (3 - 3)"])
def test_division_by_zero_is_refused(expression: str) -> None:
    with pytest.raises(CalculatorError, match="division by zero"):
        evaluate(expression)


def test_over_long_input_is_refused() -> None:
    with pytest.raises(CalculatorError, match="longer than"):
        evaluate("1+" * 600 + "1")


def test_input_at_the_length_limit_is_evaluated() -> None:
    expression = "1+" * 499 + "1"  # 999 characters
    assert calc(expression) == "500"


@pytest.mark.parametrize("expression", ["", "1 +", "import os", "x = 1", "(("])
def test_text_that_is_not_an_expression_is_refused(expression: str) -> None:
    with pytest.raises(CalculatorError, match="not an arithmetic expression"):
        evaluate(expression)


@pytest.mark.parametrize("expression", ["sqrt(-1)", "log(0)", "(-8) ** 0.5"])
def test_math_domain_errors_are_refused(expression: str) -> None:
    with pytest.raises(CalculatorError):
        evaluate(expression)


@pytest.mark.parametrize("expression", ["sqrt()", "max()", "abs(1, 2)", "round(1.5, 2, 3)"])
def test_function_calls_with_wrong_arity_are_refused(expression: str) -> None:
    with pytest.raises(CalculatorError):
        evaluate(expression)


def test_deeply_nested_input_is_refused() -> None:
    with pytest.raises(CalculatorError):
        evaluate("-" * 998 + "1")


@pytest.mark.parametrize("expression", ["1e309", "1e309 - 1e309"])
def test_infinite_literals_are_refused(expression: str) -> None:
    with pytest.raises(CalculatorError, match="out of range"):
        evaluate(expression)


def test_oversized_power_is_refused_without_computing_it() -> None:
    started = time.perf_counter()
    with pytest.raises(CalculatorError):
        evaluate("(10**300) ** 10000")
    assert time.perf_counter() - started < 0.2


# -- no eval --------------------------------------------------------------------------------


def test_the_calculator_never_uses_eval_exec_or_compile() -> None:
    tree = ast.parse(inspect.getsource(calculator))
    used = {
        node.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Name) and node.id in {"eval", "exec", "compile", "__import__"}
    }
    attributes = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in {"eval", "exec", "compile"}
    }
    assert not used and not attributes
