"""Dynamic admission: calling the Mutating- and ValidatingWebhookConfigurations' webhooks.

A webhook is called over HTTPS, verified against its `caBundle` and — for `clientConfig.service`
— against the service's DNS name `NAME.NAMESPACE.svc`, exactly as kube-apiserver would; the
test-supplied `service_resolver(namespace, name, port)` only says where on loopback that service
listens. Matching follows the apiserver: `rules` (operations, groups, versions, resources with
subresources, scope), `namespaceSelector`, `objectSelector` and CEL `matchConditions`. Failures
honour `failurePolicy` with the apiserver's messages (`Internal error occurred: failed calling
webhook "NAME": failed to call webhook: Post "URL": ...`).
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from tests.kube import cel
from tests.kube.errors import ApiError, internal_error
from tests.kube.patching import apply_json_patch
from tests.kube.resources import ResourceType
from tests.kube.selectors import matches_label_selector_object

__all__ = ["Admission", "AdmissionRequest", "ServiceResolver"]

log = logging.getLogger("tests.kube.admission")

ServiceResolver = Callable[[str, str, int], str]

_USER = {"username": "system:admin", "groups": ["system:masters", "system:authenticated"]}
_SKIPPED_GROUPS = {"admissionregistration.k8s.io"}  # the apiserver never calls webhooks on these


class _CallError(Exception):
    """The webhook could not be called or answered nonsense (subject to failurePolicy)."""


@dataclass
class AdmissionRequest:
    """What is being admitted: one write to one object."""

    operation: str  # CREATE, UPDATE, DELETE
    rtype: ResourceType
    subresource: str
    namespace: str
    name: str
    obj: dict[str, Any] | None
    old: dict[str, Any] | None
    namespace_labels: dict[str, str]
    namespace_object: dict[str, Any] | None
    dry_run: bool = False
    warnings: list[str] = field(default_factory=list)  # from webhooks, for Warning headers

    def review(self, uid: str) -> dict[str, Any]:
        gvk = {"group": self.rtype.group, "version": self.rtype.version, "kind": self.rtype.kind}
        gvr = {"group": self.rtype.group, "version": self.rtype.version,
               "resource": self.rtype.plural}
        request: dict[str, Any] = {
            "uid": uid, "kind": gvk, "resource": gvr, "requestKind": gvk,
            "requestResource": gvr, "name": self.name, "namespace": self.namespace,
            "operation": self.operation, "userInfo": _USER, "object": self.obj,
            "oldObject": self.old, "dryRun": self.dry_run,
            "options": {"kind": f"{self.operation.capitalize()}Options",
                        "apiVersion": "meta.k8s.io/v1"},
        }
        if self.subresource:
            request["subResource"] = request["requestSubResource"] = self.subresource
        if not self.namespace:
            del request["namespace"]
        return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": request}


def _listed(values: list[str] | None, wanted: str) -> bool:
    if not values:
        return False
    return "*" in values or wanted in values


def _rule_matches(rule: dict[str, Any], request: AdmissionRequest) -> bool:
    rtype = request.rtype
    listed = _listed
    if not listed(rule.get("operations"), request.operation):
        return False
    if not listed(rule.get("apiGroups"), rtype.group) or \
            not listed(rule.get("apiVersions"), rtype.version):
        return False
    scope = rule.get("scope", "*")
    if scope == "Namespaced" and not rtype.namespaced:
        return False
    if scope == "Cluster" and rtype.namespaced:
        return False
    for resource in rule.get("resources") or []:
        main, _, sub = resource.partition("/")
        if main not in ("*", rtype.plural):
            continue
        if sub == request.subresource or (sub == "*" and request.subresource):
            return True
    return False


def _webhook_matches(hook: dict[str, Any], request: AdmissionRequest) -> bool:
    if not any(_rule_matches(rule, request) for rule in hook.get("rules") or []):
        return False
    if request.rtype.namespaced:
        namespace_labels = request.namespace_labels
    elif request.rtype.plural == "namespaces" and not request.rtype.group:
        namespace_labels = ((request.obj or request.old or {}).get("metadata") or {}).get(
            "labels") or {}
    else:
        namespace_labels = None
    if namespace_labels is not None and not matches_label_selector_object(
            hook.get("namespaceSelector"), namespace_labels):
        return False
    candidates = [o for o in (request.obj, request.old) if o is not None]
    return any(matches_label_selector_object(hook.get("objectSelector"),
                                             (o.get("metadata") or {}).get("labels") or {})
               for o in candidates)


def _endpoint(hook: dict[str, Any], resolver: ServiceResolver | None) -> tuple[str, str, str]:
    """(URL shown in messages, URL actually requested, TLS server name)."""
    config = hook.get("clientConfig") or {}
    timeout = f"?timeout={int(hook.get('timeoutSeconds', 10))}s"
    if "url" in config:
        url = config["url"]
        return url + timeout, url + timeout, urlsplit(url).hostname or ""
    service = config["service"]
    name, namespace = service["name"], service["namespace"]
    port = int(service.get("port", 443))
    path = service.get("path") or ""
    host = f"{name}.{namespace}.svc"
    shown = f"https://{host}:{port}{path}{timeout}"
    if resolver is None:
        raise _CallError(f'Post "{shown}": dial tcp: lookup {host}: no such host')
    base = resolver(namespace, name, port).rstrip("/")
    return shown, f"{base}{path}{timeout}", host


class Admission:
    """Calls webhooks on behalf of the emulator; one HTTP client session on the server's loop."""

    def __init__(self, service_resolver: ServiceResolver | None,
                 configurations: Callable[[str], list[dict[str, Any]]]) -> None:
        self.service_resolver = service_resolver
        self._configurations = configurations  # kind plural -> current configuration objects
        self._session: aiohttp.ClientSession | None = None
        self.calls: list[dict[str, Any]] = []  # every AdmissionReview sent, for tests

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def _hooks(self, plural: str, request: AdmissionRequest) -> list[dict[str, Any]]:
        if request.rtype.group in _SKIPPED_GROUPS:
            return []
        configurations = sorted(self._configurations(plural),
                                key=lambda c: c["metadata"]["name"])
        return [hook for config in configurations for hook in config.get("webhooks") or []
                if _webhook_matches(hook, request)]

    async def mutate(self, request: AdmissionRequest) -> dict[str, Any] | None:
        """The object after every matching mutating webhook's patch (or ApiError)."""
        for hook in self._hooks("mutatingwebhookconfigurations", request):
            response = await self._consult(hook, request)
            if response is None:
                continue
            patch = response.get("patch")
            if patch and request.obj is not None:
                if response.get("patchType") != "JSONPatch":
                    raise internal_error(f'failed calling webhook "{hook["name"]}": unsupported '
                                         f'patch type "{response.get("patchType")}"')
                try:
                    operations = json.loads(base64.b64decode(patch))
                    request.obj = apply_json_patch(request.obj, operations)
                except (ValueError, ApiError) as error:
                    raise internal_error(f'failed calling webhook "{hook["name"]}": invalid '
                                         f"patch: {error}") from error
        return request.obj

    async def validate(self, request: AdmissionRequest) -> None:
        """Raise the first denial of a matching validating webhook."""
        for hook in self._hooks("validatingwebhookconfigurations", request):
            await self._consult(hook, request)

    async def _consult(self, hook: dict[str, Any],
                       request: AdmissionRequest) -> dict[str, Any] | None:
        """The webhook's allowing response; None if it was skipped or failed open."""
        name = hook.get("name", "")
        try:
            if not self._conditions_hold(hook, request):
                return None
            if request.dry_run and hook.get("sideEffects") not in ("None", "NoneOnDryRun"):
                raise ApiError(400, "BadRequest", f'admission webhook "{name}" has side effects '
                                                  "and does not support dry run")
            response = await self._call(hook, request)
        except _CallError as error:
            if hook.get("failurePolicy", "Fail") == "Ignore":
                log.warning("webhook %s failed open: %s", name, error)
                return None
            raise internal_error(f'failed calling webhook "{name}": {error}') from error
        request.warnings.extend(str(w) for w in response.get("warnings") or [])
        if not response.get("allowed"):
            raise _denial(name, response.get("status") or {})
        return response

    def _conditions_hold(self, hook: dict[str, Any], request: AdmissionRequest) -> bool:
        conditions = hook.get("matchConditions") or []
        if not conditions:
            return True
        variables = {"object": request.obj, "oldObject": request.old,
                     "request": request.review("")["request"],
                     "namespaceObject": request.namespace_object}
        for condition in conditions:
            try:
                if cel.evaluate(condition["expression"], variables) is not True:
                    return False
            except cel.CelError as error:
                raise _CallError(f"failed to evaluate match condition "
                                 f"{condition.get('name')!r}: {error}") from error
        return True

    async def _call(self, hook: dict[str, Any], request: AdmissionRequest) -> dict[str, Any]:
        shown, url, server_name = _endpoint(hook, self.service_resolver)
        uid = str(uuid.uuid4())
        review = request.review(uid)
        self.calls.append({"webhook": hook.get("name"), **review})
        context = ssl.create_default_context()
        bundle = (hook.get("clientConfig") or {}).get("caBundle")
        if bundle:
            context = ssl.create_default_context(cadata=base64.b64decode(bundle).decode())
        timeout = aiohttp.ClientTimeout(total=float(hook.get("timeoutSeconds", 10)))
        try:
            async with self._client().post(url, json=review, ssl=context, timeout=timeout,
                                           server_hostname=server_name or None) as answer:
                text = await answer.text()
                if answer.status != 200:
                    raise _CallError(f'failed to call webhook: an error on the server ("{text}") '
                                     f"has prevented the request from succeeding "
                                     f"(post {shown}, status {answer.status})")
        except TimeoutError as error:
            raise _CallError(f'failed to call webhook: Post "{shown}": context deadline '
                             "exceeded") from error
        except (aiohttp.ClientError, ssl.SSLError, OSError) as error:
            raise _CallError(f'failed to call webhook: Post "{shown}": {error}') from error
        try:
            response: dict[str, Any] = json.loads(text)["response"]
        except (ValueError, KeyError, TypeError) as error:
            raise _CallError(f"received invalid webhook response: {error}") from error
        if response.get("uid") != uid:
            raise _CallError(f'expected response.uid="{uid}", got "{response.get("uid")}"')
        return response


def _denial(name: str, status: dict[str, Any]) -> ApiError:
    denied = f'admission webhook "{name}" denied the request'
    code = int(status.get("code") or 0)
    code = max(code, 400)
    if status.get("message"):
        message = f"{denied}: {status['message']}"
    elif status.get("reason"):
        message = f"{denied}: {status['reason']}"
    else:
        message = f"{denied} without explanation"
    return ApiError(code, status.get("reason") or ("BadRequest" if code == 400 else "Forbidden"),
                    message, status.get("details") or {})
