"""The apiserver's `Status` failures, built the way kube-apiserver builds them.

Clients branch on `reason` and `code` (kopf retries on 409 and 410, kubectl prints `message`), so
each constructor here mirrors one of apimachinery's `errors.New*` functions: same reason, code,
`details` shape and message wording.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ApiError",
    "Cause",
    "already_exists",
    "bad_request",
    "conflict",
    "expired",
    "forbidden",
    "internal_error",
    "invalid",
    "method_not_allowed",
    "not_acceptable",
    "not_found",
    "path_not_found",
    "render_value",
    "status_success",
    "unsupported_media_type",
]


def render_value(value: Any) -> str:
    """A value as Go's `field.Error` prints it: strings quoted, scalars bare, the rest as JSON."""
    import json  # noqa: PLC0415 - only error paths need it

    if value is None:
        return '"null"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


@dataclass(frozen=True)
class Cause:
    """One `details.causes[]` entry: a field error as `field.Error` renders it."""

    reason: str  # FieldValueInvalid, FieldValueRequired, FieldValueNotSupported, ...
    field: str  # "spec.splunk.hecUrl"
    body: str  # 'Invalid value: "ftp://x": spec.splunk.hecUrl in body should match ...'

    def as_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "message": self.body, "field": self.field}

    def __str__(self) -> str:
        return f"{self.field}: {self.body}" if self.field else self.body

    @classmethod
    def invalid(cls, path: str, value: Any, detail: str) -> Cause:
        return cls("FieldValueInvalid", path, f"Invalid value: {render_value(value)}: {detail}")

    @classmethod
    def required(cls, path: str, detail: str = "") -> Cause:
        return cls("FieldValueRequired", path, "Required value" + (f": {detail}" if detail else ""))

    @classmethod
    def not_supported(cls, path: str, value: Any, allowed: list[Any]) -> Cause:
        listed = ", ".join(render_value(item) for item in allowed)
        return cls("FieldValueNotSupported", path,
                   f"Unsupported value: {render_value(value)}: supported values: {listed}")

    @classmethod
    def too_long(cls, path: str, limit: int) -> Cause:
        return cls("FieldValueTooLong", path, f"Too long: may not be more than {limit} bytes")

    @classmethod
    def too_many(cls, path: str, count: int, limit: int) -> Cause:
        return cls("FieldValueTooMany", path, f"Too many: {count}: must have at most {limit} items")

    @classmethod
    def forbidden(cls, path: str, detail: str) -> Cause:
        return cls("FieldValueForbidden", path, f"Forbidden: {detail}")

    @classmethod
    def duplicate(cls, path: str, value: Any) -> Cause:
        return cls("FieldValueDuplicate", path, f"Duplicate value: {render_value(value)}")


@dataclass
class ApiError(Exception):
    """A failure answered as a `Status` object with the given HTTP code."""

    code: int
    reason: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code} {self.reason}: {self.message}"

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def _details(resource: str, group: str, name: str, **extra: Any) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name} if name else {}
    if group:
        details["group"] = group
    details["kind"] = resource
    details.update(extra)
    return details


def _qualified(resource: str, group: str) -> str:
    return f"{resource}.{group}" if group else resource


def not_found(resource: str, group: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{_qualified(resource, group)} "{name}" not found',
                    _details(resource, group, name))


def path_not_found() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource",
                    {"causes": [{"reason": "UnexpectedServerResponse",
                                 "message": "404 page not found"}]})


def already_exists(resource: str, group: str, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{_qualified(resource, group)} "{name}" already exists',
                    _details(resource, group, name))


def conflict(resource: str, group: str, name: str, why: str | None = None) -> ApiError:
    why = why or ("the object has been modified; please apply your changes to the latest version "
                  "and try again")
    target = f'{_qualified(resource, group)} "{name}"'
    return ApiError(409, "Conflict", f"Operation cannot be fulfilled on {target}: {why}",
                    _details(resource, group, name))


def invalid(kind: str, group: str, name: str, causes: list[Cause]) -> ApiError:
    """422 Invalid, with the message `Kind.group "name" is invalid: field: body[, ...]`."""
    rendered = [str(cause) for cause in causes]
    listed = rendered[0] if len(rendered) == 1 else "[" + ", ".join(rendered) + "]"
    message = f'{_qualified(kind, group)} "{name}" is invalid: {listed}'
    details = _details(kind, group, name, causes=[cause.as_dict() for cause in causes])
    return ApiError(422, "Invalid", message, details)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def forbidden(resource: str, group: str, name: str, why: str) -> ApiError:
    target = f'{_qualified(resource, group)} "{name}"' if name else _qualified(resource, group)
    return ApiError(403, "Forbidden", f"{target} is forbidden: {why}",
                    _details(resource, group, name))


def method_not_allowed() -> ApiError:
    return ApiError(405, "MethodNotAllowed",
                    "the server does not allow this method on the requested resource")


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def not_acceptable(accepted: str) -> ApiError:
    return ApiError(406, "NotAcceptable",
                    f"only the following media types are accepted: {accepted}")


def unsupported_media_type(content_type: str, accepted: list[str]) -> ApiError:
    return ApiError(415, "UnsupportedMediaType",
                    f"the body of the request was in an unknown format - accepted media types "
                    f"include: {', '.join(accepted)}",
                    {"causes": [{"reason": "UnexpectedServerResponse", "message": content_type}]})


def internal_error(message: str) -> ApiError:
    return ApiError(500, "InternalError", f"Internal error occurred: {message}",
                    {"causes": [{"message": message}]})


def status_success(resource: str, group: str, name: str, uid: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": _details(resource, group, name, uid=uid)}
