"""An `AuditPolicy` and its namespace's `AuditExport`s, rendered as the worker's config file.

The custom resources name Secrets (`secretKeyRef`, `tls.secretName`); a worker reads files. So
rendering is mostly a translation: each Secret becomes a directory the pod mounts (see
`naming`), each reference the file in it, and what comes out must validate as `WorkerConfig`
(it is validated here, so a config that a worker would refuse is never written).

Nothing is rendered that would break at run time: an export whose Secret or key is missing is
left out (and said so in `problems`), rather than given a path the kubelet never fills; a
policy whose own Secrets are missing (checkpoint key, collector token) is not rendered at all,
because running without them would silently drop tamper evidence or authentication.

Pure: the caller gathers the facts (the policy, the exports by name, the keys of each Secret of
the namespace) and gets back data; no client, no clock.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import yaml
from pydantic import ValidationError

from sealtrail.api.errors import UNKNOWN_SETTING, field_errors
from sealtrail.api.export import SecretKeySelector
from sealtrail.api.resources import AuditExportSpec, AuditPolicySpec, quantity
from sealtrail.api.worker_api import without_live_fields
from sealtrail.api.worker_config import WorkerConfig
from sealtrail.operator import naming

__all__ = [
    "Policy",
    "RenderResult",
    "RenderedConfig",
    "SecretMount",
    "config_map",
    "export_from_object",
    "render_worker_config",
    "secret_keys_of",
]

#: Top-level keys of worker.yaml in reading order (as docs/worker-config.md shows them).
_TOP_ORDER: Final = ("store", "checkpoints", "ingest", "admin", "nats", "drainTimeoutSeconds",
                     "routes", "exports")
_TLS_CA: Final = "ca.crt"
_TLS_CERT: Final = "tls.crt"
_TLS_KEY: Final = "tls.key"


@dataclass(frozen=True, slots=True)
class Policy:
    """An `AuditPolicy` as the planners need it: identity (for names and owners) and spec."""

    name: str
    namespace: str
    uid: str
    spec: AuditPolicySpec

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Policy:
        """Parse a policy object (as kopf or the API gives it); raises `ValidationError`."""
        metadata = obj.get("metadata") or {}
        return cls(name=str(metadata["name"]), namespace=str(metadata.get("namespace", "")),
                   uid=str(metadata.get("uid", "")),
                   spec=AuditPolicySpec.model_validate(obj.get("spec") or {}))


def export_from_object(obj: Mapping[str, Any]) -> tuple[str, AuditExportSpec]:
    """`(name, spec)` of an `AuditExport` object; raises `ValidationError` on a bad spec."""
    return str(obj["metadata"]["name"]), AuditExportSpec.model_validate(obj.get("spec") or {})


def secret_keys_of(secrets: Iterable[Mapping[str, Any]]) -> dict[str, frozenset[str]]:
    """Secret name to its keys, from Secret objects (`data` and `stringData`; never values)."""
    return {
        str(secret["metadata"]["name"]):
            frozenset(secret.get("data") or {}) | frozenset(secret.get("stringData") or {})
        for secret in secrets
    }


@dataclass(frozen=True, slots=True)
class SecretMount:
    """A Secret (or a ConfigMap) the worker needs as files: mounted whole, read-only, at `path`.

    A ConfigMap is mounted `optional`: the one a policy names (a collector's CA) is someone
    else's object, and a pod must never wait for it; the worker reports a missing file itself.
    """

    secret: str  # the object's name
    volume: str
    path: str
    kind: Literal["secret", "configMap"] = "secret"


@dataclass(frozen=True, slots=True)
class RenderedConfig:
    """A worker config that validated, as text, with the Secrets its file paths point into."""

    policy: str
    namespace: str
    mode: Literal["sidecar", "collector"]
    config: WorkerConfig
    #: worker.yaml, exactly as the ConfigMap holds it.
    text: str
    #: sha256[:16] of `text` (annotation `sealtrail.dev/config-hash`).
    config_hash: str
    #: sha256[:16] of what a worker reads only at start (`sealtrail.dev/restart-hash`).
    restart_hash: str
    #: Every Secret a path in `text` points into, sorted by volume name.
    mounts: tuple[SecretMount, ...]


@dataclass(frozen=True, slots=True)
class RenderResult:
    """What rendering found; `rendered` is None when the policy cannot run (see `problems`)."""

    rendered: RenderedConfig | None
    #: Exports the routes name that exist in the namespace (first-mention order).
    matched_exports: tuple[str, ...]
    #: Exports the routes name that do not exist.
    unknown_exports: tuple[str, ...]
    #: Matched exports left out of the config because their Secrets are missing or incomplete.
    skipped_exports: tuple[str, ...]
    #: For a person: each names the object and field, e.g. `auditexport/splunk-prod:
    #: spec.splunk.token.secretKeyRef: Secret "hec" has no key "token"`.
    problems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Part:
    """A piece of config with the mounts it needs, or the problems that prevent it."""

    value: dict[str, Any] | None
    mounts: tuple[SecretMount, ...] = ()
    problems: tuple[str, ...] = ()


def _check_ref(where: str, ref: SecretKeySelector,
               secret_keys: Mapping[str, frozenset[str]]) -> str | None:
    keys = secret_keys.get(ref.name)
    if keys is None:
        return f'{where}: Secret "{ref.name}" not found'
    if ref.key not in keys:
        return f'{where}: Secret "{ref.name}" has no key "{ref.key}"'
    return None


def _file_ref(where: str, ref: SecretKeySelector,
              secret_keys: Mapping[str, frozenset[str]]) -> _Part:
    """A `secretKeyRef` as `{file: ...}` and its mount, or the problem."""
    problem = _check_ref(where, ref, secret_keys)
    if problem is not None:
        return _Part(None, problems=(problem,))
    mount = SecretMount(ref.name, naming.secret_volume_name(ref.name),
                        naming.secret_mount_path(ref.name))
    return _Part({"file": naming.secret_file(ref.name, ref.key)}, mounts=(mount,))


def _tls_files(where: str, secret: str, secret_keys: Mapping[str, frozenset[str]]) -> _Part:
    """`tls.secretName` as `caFile`/`certFile`/`keyFile` for the keys the Secret holds."""
    keys = secret_keys.get(secret)
    if keys is None:
        return _Part(None, problems=(f'{where}: Secret "{secret}" not found',))
    has_cert, has_key = _TLS_CERT in keys, _TLS_KEY in keys
    if has_cert != has_key:
        present, absent = (_TLS_CERT, _TLS_KEY) if has_cert else (_TLS_KEY, _TLS_CERT)
        return _Part(None, problems=(
            f'{where}: Secret "{secret}" has key "{present}" but no key "{absent}"',))
    if _TLS_CA not in keys and not has_cert:
        message = (f'{where}: Secret "{secret}" has none of the keys "{_TLS_CA}", '
                   f'"{_TLS_CERT}" and "{_TLS_KEY}"')
        return _Part(None, problems=(message,))
    directory = naming.tls_mount_path(secret)
    files: dict[str, Any] = {}
    if _TLS_CA in keys:
        files["caFile"] = f"{directory}/{_TLS_CA}"
    if has_cert:
        files["certFile"] = f"{directory}/{_TLS_CERT}"
        files["keyFile"] = f"{directory}/{_TLS_KEY}"
    mount = SecretMount(secret, naming.tls_volume_name(secret), directory)
    return _Part(files, mounts=(mount,))


def _set_at(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        data = data[part]
    data[path[-1]] = value


def _render_export(name: str, spec: AuditExportSpec,
                   secret_keys: Mapping[str, frozenset[str]]) -> _Part:
    """One `exports` entry: the spec with every Secret reference turned into files."""
    entry: dict[str, Any] = {"name": name,
                             **spec.model_dump(mode="json", by_alias=True, exclude_none=True)}
    mounts: list[SecretMount] = []
    problems: list[str] = []
    for path, ref in spec.credentials():
        if ref.secret_key_ref is None:  # refused by AuditExportSpec; kept for the type checker
            continue
        where = f"auditexport/{name}: spec.{'.'.join(path)}.secretKeyRef"
        part = _file_ref(where, ref.secret_key_ref, secret_keys)
        problems += part.problems
        mounts += part.mounts
        if part.value is not None:
            _set_at(entry, path, part.value)
    if spec.tls.secret_name is not None:
        part = _tls_files(f"auditexport/{name}: spec.tls.secretName", spec.tls.secret_name,
                          secret_keys)
        problems += part.problems
        mounts += part.mounts
        tls = entry["tls"]
        del tls["secretName"]
        tls.update(part.value or {})
    if problems:
        return _Part(None, problems=tuple(problems))
    return _Part(entry, mounts=tuple(mounts))


def _routes(policy: Policy, rendered: set[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The policy's rules in order, naming only rendered exports; a rule left empty goes."""
    routes: list[dict[str, Any]] = []
    problems: list[str] = []
    for number, rule in enumerate(policy.spec.routes):
        names = [name for name in rule.exports if name in rendered]
        if rule.exports and not names:
            # Kept, sending nowhere: dropping the rule would hand its rows to the rules after
            # it (first match wins), perhaps a catch-all SIEM the author never meant them for.
            problems.append(
                f"auditpolicy/{policy.name}: spec.routes[{number}]: none of its exports can be "
                "rendered, so the rows it matches go nowhere until they can")
        route = rule.model_dump(mode="json", by_alias=True, exclude_none=True)
        route["exports"] = names
        routes.append(route)
    return routes, problems


def _policy_secrets(policy: Policy,
                    secret_keys: Mapping[str, frozenset[str]]) -> tuple[_Part, _Part | None]:
    """The checkpoint key and (collector mode) the ingest token, as files."""
    spec = policy.spec
    where = f"auditpolicy/{policy.name}: spec"
    signing = _Part({})
    key = spec.checkpoints.signing_key
    if key is not None and key.secret_key_ref is not None:
        signing = _file_ref(f"{where}.checkpoints.signingKey.secretKeyRef",
                            key.secret_key_ref, secret_keys)
    token = spec.collector.ingest_token
    if spec.mode != "collector":
        return signing, None
    if token is None or token.secret_key_ref is None:
        message = (f"{where}.collector.ingestToken: not set, so the collector accepts events "
                   "from anyone who can reach its Service")
        return signing, _Part({}, problems=(message,))
    return signing, _file_ref(f"{where}.collector.ingestToken.secretKeyRef",
                              token.secret_key_ref, secret_keys)


def _handoff(policy: Policy, collector_token: _Part | None,
             secret_keys: Mapping[str, frozenset[str]]) -> _Part:
    """The worker's `handoff` (`{}`: none): where a sidecar hands off, what a collector takes.

    A collector with an ingest token takes handoffs with that same credential; a sidecar
    policy's `spec.handoff` becomes the URL, the token file and the CA file.
    """
    if collector_token is not None and collector_token.value:
        return _Part({"accept": {"tokens": [collector_token.value]}})
    handoff = policy.spec.handoff
    if handoff is None:
        return _Part({})
    assert handoff.token.secret_key_ref is not None  # noqa: S101 - the model requires it
    token = _file_ref(f"auditpolicy/{policy.name}: spec.handoff.token.secretKeyRef",
                      handoff.token.secret_key_ref, secret_keys)
    if token.value is None:
        return token
    value: dict[str, Any] = {"url": handoff.url, "token": token.value}
    mounts = list(token.mounts)
    if handoff.ca_config_map is not None:
        directory = naming.config_map_mount_path(handoff.ca_config_map)
        value["caFile"] = f"{directory}/ca.crt"
        mounts.append(SecretMount(handoff.ca_config_map,
                                  naming.config_map_volume_name(handoff.ca_config_map),
                                  directory, kind="configMap"))
    return _Part(value, mounts=tuple(mounts))


def _document(data: dict[str, Any]) -> str:
    """worker.yaml: top-level keys in reading order, each export's name first, else model order."""
    ordered: dict[str, Any] = {key: data[key] for key in _TOP_ORDER if key in data}
    ordered.update({key: value for key, value in data.items() if key not in ordered})
    ordered["exports"] = [{"name": entry["name"], **entry} for entry in data["exports"]]
    return yaml.safe_dump(ordered, sort_keys=False, default_flow_style=False, width=100)


def _restart_hash(data: Mapping[str, Any]) -> str:
    """A hash of what a running worker reads only at start (the contract's `LIVE_FIELDS`)."""
    restart = without_live_fields(data)
    return naming.content_hash(json.dumps(restart, sort_keys=True, separators=(",", ":")))


def _ingest_tls(mode: str) -> dict[str, Any]:
    """The collector serves HTTPS, with the certificate the operator issues (`collector_tls`)."""
    if mode != "collector":
        return {}
    return {"tls": {"certFile": f"{naming.COLLECTOR_TLS_DIR}/{_TLS_CERT}",
                    "keyFile": f"{naming.COLLECTOR_TLS_DIR}/{_TLS_KEY}"}}


def render_worker_config(policy: Policy, exports: Mapping[str, AuditExportSpec],
                         secret_keys: Mapping[str, frozenset[str]]) -> RenderResult:
    """Render `policy` with the exports of its namespace (by name) and its Secrets' keys."""
    spec = policy.spec
    worker = spec.worker
    named = spec.export_names()
    matched = tuple(name for name in named if name in exports)
    unknown = tuple(name for name in named if name not in exports)
    problems = [f'auditpolicy/{policy.name}: spec.routes: no AuditExport "{name}" in namespace '
                f'"{policy.namespace}"' for name in unknown]
    mounts: list[SecretMount] = []
    entries: list[dict[str, Any]] = []
    skipped: list[str] = []
    for name in matched:
        part = _render_export(name, exports[name], secret_keys)
        problems += part.problems
        if part.value is None:
            skipped.append(name)
            continue
        entries.append(part.value)
        mounts += part.mounts
    routes, route_problems = _routes(policy, {entry["name"] for entry in entries})
    problems += route_problems

    signing, token = _policy_secrets(policy, secret_keys)
    problems += signing.problems
    if token is not None:
        problems += token.problems
    if signing.value is None or (token is not None and token.value is None):
        return RenderResult(None, matched, unknown, tuple(skipped), tuple(problems))
    mounts += signing.mounts
    checkpoints: dict[str, Any] = {"everyRows": spec.checkpoints.every_rows,
                                   "everySeconds": spec.checkpoints.every_seconds}
    if signing.value:
        checkpoints["signingKey"] = signing.value
    tokens: list[dict[str, Any]] = []
    if token is not None and token.value:
        tokens.append({"token": token.value, "tenants": ["*"]})
        mounts += token.mounts
    handoff = _handoff(policy, token, secret_keys)
    problems += handoff.problems
    if handoff.value is None:
        return RenderResult(None, matched, unknown, tuple(skipped), tuple(problems))
    mounts += handoff.mounts
    # `[::]` is every address, IPv6 and IPv4 (an IPv6-only, dual-stack or IPv4 pod's address);
    # a sidecar's ingest stays on loopback, where 127.0.0.1 exists in every pod.
    host = "[::]" if spec.mode == "collector" else "127.0.0.1"
    raw = {
        "store": {"path": naming.STORE_PATH, "synchronous": worker.synchronous,
                  "defaultTenant": spec.default_tenant.replace("${namespace}", policy.namespace),
                  "budgetBytes": store_budget_bytes(spec),
                  **({"retention": {"keepSeconds": worker.retention_seconds}}
                     if signing.value and worker.retention_seconds is not None else {})},
        "checkpoints": checkpoints,
        "ingest": {"listen": f"{host}:{worker.port}", "processes": worker.processes,
                   "backpressure": worker.backpressure.model_dump(mode="json", by_alias=True),
                   "tokens": tokens, **_ingest_tls(spec.mode)},
        # The admin API (status, metrics, resume) answers only the namespace's admin
        # credential, which the operator makes and holds (`apply.ensure_admin_secret`).
        "admin": {"listen": f"[::]:{worker.admin_port}",
                  "token": {"file": naming.secret_file(naming.ADMIN_SECRET,
                                                       naming.ADMIN_SECRET_KEY)},
                  "metricsToken": {"file": naming.secret_file(naming.ADMIN_SECRET,
                                                              naming.METRICS_TOKEN_KEY)}},
        "drainTimeoutSeconds": worker.drain_timeout_seconds,
        **({"handoff": handoff.value} if handoff.value else {}),
        "routes": routes,
        "exports": entries,
    }
    try:
        config = WorkerConfig.model_validate(raw)
    except ValidationError as error:  # a planner bug or a model change; say so, do not crash
        problems += [f"auditpolicy/{policy.name}: rendered worker config is invalid: {problem}"
                     for problem in field_errors(error, unknown=UNKNOWN_SETTING)]
        return RenderResult(None, matched, unknown, tuple(skipped), tuple(problems))
    data = config.model_dump(mode="json", by_alias=True, exclude_none=True)
    text = _document(data)
    mounts.append(SecretMount(naming.ADMIN_SECRET, naming.secret_volume_name(naming.ADMIN_SECRET),
                              naming.secret_mount_path(naming.ADMIN_SECRET)))
    unique = {mount.volume: mount for mount in mounts}
    rendered = RenderedConfig(
        policy=policy.name, namespace=policy.namespace, mode=spec.mode, config=config,
        text=text, config_hash=naming.content_hash(text), restart_hash=_restart_hash(data),
        mounts=tuple(unique[volume] for volume in sorted(unique)))
    return RenderResult(rendered, matched, unknown, tuple(skipped), tuple(problems))


def store_budget_bytes(spec: AuditPolicySpec) -> int:
    """What the worker's store may hold: all of its volume, which the worker keeps below.

    A sidecar's store is an `emptyDir` whose `sizeLimit` is `worker.storeSize`: past it the
    kubelet evicts the pod. A collector's is its volume claim (`collector.storageSize`), where
    the filesystem's own free space also bounds it. The worker's back-pressure refuses ingest
    at `storeHighFraction` of this, so the limit itself is never reached.
    """
    size = spec.collector.storage_size if spec.mode == "collector" else spec.worker.store_size
    return int(quantity(size))


def config_map(policy: Policy, rendered: RenderedConfig) -> dict[str, Any]:
    """The ConfigMap `sealtrail-<policy>` holding worker.yaml, owned by the policy."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": naming.config_map_name(policy.name),
            "namespace": policy.namespace,
            "labels": naming.managed_labels(policy.name),
            "annotations": {naming.CONFIG_HASH_ANNOTATION: rendered.config_hash},
            "ownerReferences": [naming.owner_reference(policy.name, policy.uid)],
        },
        "data": {naming.CONFIG_KEY: rendered.text},
    }
