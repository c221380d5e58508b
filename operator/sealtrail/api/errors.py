"""Turn pydantic's validation errors into messages a person can act on.

Every message names the field by the path a user would write (`extra.region`,
`risk_tags[2]`), so a bad line in a batch of a thousand can be found and fixed.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import ValidationError

__all__ = ["UNKNOWN_EVENT_FIELD", "UNKNOWN_SETTING", "FieldError", "field_errors", "format_path"]


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with one field."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


def format_path(location: tuple[int | str, ...]) -> str:
    """`("extra", "a", 1)` becomes `extra.a[1]`."""
    path = ""
    for part in location:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


UNKNOWN_EVENT_FIELD = "is not a field of an audit event"
#: For config files and resources: a typo there is not "a field of an audit event".
UNKNOWN_SETTING = "is not a known setting (check its spelling)"


def field_errors(error: ValidationError, *, unknown: str = UNKNOWN_EVENT_FIELD
                 ) -> list[FieldError]:
    """One `FieldError` per problem, in the order pydantic found them.

    `unknown` is what an unknown field is called: not a field of an event, by default.
    """
    found = []
    for detail in error.errors(include_url=False, include_input=False):
        message = detail["msg"].removeprefix("Value error, ")
        if detail["type"] == "extra_forbidden":
            message = unknown
        elif detail["type"] == "missing":
            message = "is required"
        found.append(FieldError(format_path(tuple(detail["loc"])), message))
    return found
