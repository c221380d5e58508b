"""CEL for `x-kubernetes-validations` rules and webhook `matchConditions`, via cel-python.

cel-python (`celpy`) implements the CEL language; what Kubernetes adds on top — binding `self`
and `oldSelf`, treating a rule that mentions `oldSelf` as a transition rule, the default message
`failed rule: <rule>` — is done here. Kubernetes' CEL library extensions (`quantity()`, `url()`,
`ip()`, `format.*`) and cost limits are not available.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.evaluation import CELEvalError

__all__ = ["CelError", "compile_rule", "evaluate", "is_transition_rule"]

_OLD_SELF = re.compile(r"\boldSelf\b")


class CelError(Exception):
    """A rule that does not compile, fails at run time, or yields the wrong type."""


@dataclass(frozen=True)
class _Compiled:
    program: Any


_lock = threading.Lock()
_environment: celpy.Environment | None = None
_programs: dict[str, _Compiled] = {}


def _env() -> celpy.Environment:
    global _environment  # noqa: PLW0603 - one parser for the process; building it takes 0.1 s
    if _environment is None:
        _environment = celpy.Environment()
    return _environment


def compile_rule(expression: str) -> Any:
    """The compiled program (cached); CelError if the expression does not parse."""
    with _lock:
        cached = _programs.get(expression)
        if cached is not None:
            return cached.program
        environment = _env()
        try:
            program = environment.program(environment.compile(expression))
        except Exception as error:
            raise CelError(f"compilation failed: {error}".strip()) from error
        _programs[expression] = _Compiled(program)
        return program


def is_transition_rule(expression: str) -> bool:
    return bool(_OLD_SELF.search(expression))


def _to_python(value: Any) -> Any:
    if isinstance(value, celtypes.BoolType):
        return bool(value)
    if isinstance(value, celtypes.IntType | celtypes.UintType):
        return int(value)
    if isinstance(value, celtypes.DoubleType):
        return float(value)
    if isinstance(value, celtypes.StringType):
        return str(value)
    return value


def evaluate(expression: str, variables: dict[str, Any]) -> Any:
    """Evaluate with JSON-like variables; the result as a Python value, or CelError."""
    program = compile_rule(expression)
    activation = {name: json_to_cel(value) for name, value in variables.items()}
    try:
        result = program.evaluate(activation)
    except Exception as error:
        raise CelError(_describe(error)) from error
    if isinstance(result, CELEvalError):
        raise CelError(_describe(result))
    return _to_python(result)


def _describe(error: BaseException) -> str:
    if error.args and isinstance(error.args[0], str):
        return error.args[0]
    return str(error) or type(error).__name__
