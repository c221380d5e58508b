r"""Decoding the protobuf request bodies that kubectl's typed clients send for built-in kinds.

client-go's generated clientsets prefer protobuf (`Content-Type: application/vnd.kubernetes
.protobuf`, with JSON acceptable in answers) and, unlike CBOR, never fall back to JSON on a 415.
So `kubectl create namespace|configmap|secret|serviceaccount` POST protobuf. This module reads
the `k8s\0` envelope (`runtime.Unknown`) and the messages of those four kinds, field numbers as
in k8s.io/api's generated.proto; other kinds are refused with 415 and a hint. Answers are JSON,
which those clients accept.
"""

from __future__ import annotations

import base64
import datetime as dt
from typing import Any

from tests.kube.errors import ApiError, bad_request

__all__ = ["PROTOBUF", "decode"]

PROTOBUF = "application/vnd.kubernetes.protobuf"
_MAGIC = b"k8s\x00"

# A schema maps field number -> (JSON name, kind); a kind is a scalar name, "map:string",
# "map:bytes", or a nested schema (dict), optionally repeated ("*" suffix / list wrapper).
Schema = dict[int, tuple[str, Any]]

_TIME: Schema = {1: ("seconds", "int"), 2: ("nanos", "int")}
_OWNER: Schema = {1: ("kind", "string"), 3: ("name", "string"), 4: ("uid", "string"),
                  5: ("apiVersion", "string"), 6: ("controller", "bool"),
                  7: ("blockOwnerDeletion", "bool")}
_META: Schema = {
    1: ("name", "string"), 2: ("generateName", "string"), 3: ("namespace", "string"),
    5: ("uid", "string"), 6: ("resourceVersion", "string"), 7: ("generation", "int"),
    8: ("creationTimestamp", _TIME), 9: ("deletionTimestamp", _TIME),
    10: ("deletionGracePeriodSeconds", "int"), 11: ("labels", "map:string"),
    12: ("annotations", "map:string"), 13: ("ownerReferences", [_OWNER]),
    14: ("finalizers", ["string"]),
}
_REFERENCE: Schema = {1: ("kind", "string"), 2: ("namespace", "string"), 3: ("name", "string"),
                      4: ("uid", "string"), 5: ("apiVersion", "string"),
                      6: ("resourceVersion", "string"), 7: ("fieldPath", "string")}
_KINDS: dict[tuple[str, str], Schema] = {
    ("v1", "Namespace"): {1: ("metadata", _META), 2: ("spec", {1: ("finalizers", ["string"])}),
                          3: ("status", {1: ("phase", "string")})},
    ("v1", "ConfigMap"): {1: ("metadata", _META), 2: ("data", "map:string"),
                          3: ("binaryData", "map:bytes"), 4: ("immutable", "bool")},
    ("v1", "Secret"): {1: ("metadata", _META), 2: ("data", "map:bytes"), 3: ("type", "string"),
                       4: ("stringData", "map:string"), 5: ("immutable", "bool")},
    ("v1", "ServiceAccount"): {1: ("metadata", _META), 2: ("secrets", [_REFERENCE]),
                               3: ("imagePullSecrets", [{1: ("name", "string")}]),
                               4: ("automountServiceAccountToken", "bool")},
}
_ENVELOPE: Schema = {1: ("typeMeta", {1: ("apiVersion", "string"), 2: ("kind", "string")}),
                     2: ("raw", "raw")}


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(data):
            raise bad_request("protobuf: truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, Any]]:
    fields: list[tuple[int, Any]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = int.from_bytes(data[pos:pos + size], "little"), pos + size
        else:
            raise bad_request(f"protobuf: unsupported wire type {wire}")
        fields.append((number, value))
    return fields


def _scalar(kind: Any, value: Any) -> Any:
    if isinstance(kind, dict):
        return _message(value, kind)
    if kind == "string":
        return value.decode("utf-8")
    if kind == "bool":
        return bool(value)
    if kind == "int":
        return value - (1 << 64) if value >= 1 << 63 else value
    if kind == "raw":
        return value
    raise bad_request(f"protobuf: cannot decode {kind}")


def _message(data: bytes, schema: Schema) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for number, value in _fields(data):
        if number not in schema:
            continue
        name, kind = schema[number]
        if isinstance(kind, list):
            result.setdefault(name, []).append(_scalar(kind[0], value))
        elif isinstance(kind, str) and kind.startswith("map:"):
            entry = dict(_fields(value))
            key = entry.get(1, b"").decode("utf-8")
            raw = entry.get(2, b"")
            result.setdefault(name, {})[key] = (base64.b64encode(raw).decode()
                                                if kind == "map:bytes" else raw.decode("utf-8"))
        else:
            decoded = _scalar(kind, value)
            if decoded != "" and not (name == "generation" and decoded == 0):
                result[name] = decoded  # Go's JSON omits the empty strings protobuf carries
    return result


def _times(meta: dict[str, Any]) -> None:
    for key in ("creationTimestamp", "deletionTimestamp"):
        if isinstance(meta.get(key), dict):
            seconds = int(meta[key].get("seconds", 0))
            meta[key] = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def decode(body: bytes) -> dict[str, Any]:
    """The object a protobuf request body carries, as JSON-like data."""
    if not body.startswith(_MAGIC):
        raise bad_request("protobuf: the body does not start with the k8s envelope")
    envelope = _message(body[len(_MAGIC):], _ENVELOPE)
    type_meta = envelope.get("typeMeta") or {}
    api_version, kind = type_meta.get("apiVersion", ""), type_meta.get("kind", "")
    schema = _KINDS.get((api_version, kind))
    if schema is None:
        raise ApiError(415, "UnsupportedMediaType",
                       f"the emulator decodes protobuf only for {sorted(k for _, k in _KINDS)}, "
                       f"not {kind} {api_version}; send JSON instead (e.g. `kubectl create ... "
                       "--dry-run=client -o yaml | kubectl apply -f -`)")
    obj = {"apiVersion": api_version, "kind": kind, **_message(envelope.get("raw", b""), schema)}
    _times(obj.setdefault("metadata", {}))
    return obj
