"""The collector's HTTPS: a CA of its own, a serving certificate, and the CA published.

A kube-apiserver cannot resolve cluster DNS, so it reaches the collector at the Service's
ClusterIP, and a certificate for it must name that IP. The IP is known only once the Service
exists (unless `spec.collector.clusterIP` pins it), so this is planned after the Service is
applied, from what the API says about it and about the Secrets planned last time:

- `<collector>-ca` (Secret, never mounted): the CA certificate and its key, made once and kept
  for ten years, so renewing or re-issuing the serving certificate never changes what callers
  trust (the apiserver's kubeconfig is a file on every control-plane node).
- `<collector>-tls` (Secret, `kubernetes.io/tls`, mounted into the collector): the serving
  certificate for the Service's DNS names and its ClusterIPs, re-issued when that set changes,
  when it has less than 30 days left, or when it is not the CA's; the worker follows the files,
  so a new one needs no restart.
- `<collector>-ca` (ConfigMap): `ca.crt` and `audit-webhook-kubeconfig.yaml`, a kubeconfig for
  the apiserver's `--audit-webhook-config-file` naming `https://<clusterIP>:<port>` and the CA
  (the bearer token is left for the admin to add as a file: it is a secret, this is not).

No I/O and no clock of its own (the caller passes `now`); what is random is only new keys, and
an unchanged plan is the very objects read, so applying it writes nothing.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sealtrail.operator import naming
from sealtrail.operator.certs import general_names
from sealtrail.operator.collector import ingest_url, serving_hosts
from sealtrail.operator.render import Policy

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "KUBECONFIG_KEY",
    "CollectorTlsPlan",
    "plan_collector_tls",
    "serving_problem",
]

CA_CERT: Final = "ca.crt"
CA_KEY: Final = "ca.key"
TLS_CERT: Final = "tls.crt"
TLS_KEY: Final = "tls.key"
KUBECONFIG_KEY: Final = "audit-webhook-kubeconfig.yaml"
#: Where the example kubeconfig expects the admin to put the ingest token on the node.
TOKEN_FILE: Final = "/etc/kubernetes/sealtrail-collector-token"  # noqa: S105 - a path

_CA_VALID: Final = dt.timedelta(days=3650)
_SERVING_VALID: Final = dt.timedelta(days=365)
_RENEW_BEFORE: Final = dt.timedelta(days=30)
_BACKDATE: Final = dt.timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class CollectorTlsPlan:
    """The CA Secret, the serving Secret and the published CA, each owned by the policy."""

    ca_secret: dict[str, Any]
    serving_secret: dict[str, Any]
    ca_config_map: dict[str, Any]
    #: Why a new certificate was made, for the log (None: the current one is kept).
    issued: str | None


def _data(secret: Mapping[str, Any] | None) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for key, value in ((secret or {}).get("data") or {}).items():
        try:
            found[str(key)] = base64.b64decode(str(value), validate=True)
        except (binascii.Error, ValueError):
            continue
    return found


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _make_ca(policy: Policy, now: dt.datetime) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(f"sealtrail collector CA {policy.namespace}/{policy.name}"[:64])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE).not_valid_after(now + _CA_VALID)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def _issue(ca_pem: bytes, ca_key_pem: bytes, hosts: Sequence[str],
           now: dt.datetime) -> tuple[bytes, bytes]:
    ca = x509.load_pem_x509_certificate(ca_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError("the collector CA key is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0][:64])).issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(min(now + _SERVING_VALID, ca.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(general_names(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                     content_commitment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def _pair(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> bool:
    """Whether `key` is the private key of `cert`."""
    def spki(public: Any) -> bytes:
        return bytes(public.public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo))
    return spki(key.public_key()) == spki(cert.public_key())


def _ca_problem(data: Mapping[str, bytes], now: dt.datetime) -> str | None:
    """Why the stored CA cannot be kept (None: keep it)."""
    if CA_CERT not in data or CA_KEY not in data:
        return "there was no CA"
    try:
        cert = x509.load_pem_x509_certificate(data[CA_CERT])
        key = serialization.load_pem_private_key(data[CA_KEY], password=None)
    except ValueError:
        return "the stored CA could not be read"
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not _pair(key, cert):
        return "the stored CA key does not belong to its certificate"
    if cert.not_valid_after_utc - now < _SERVING_VALID:
        return "the CA expires within a year"
    return None


def _hosts_problem(cert: x509.Certificate, hosts: Sequence[str]) -> str | None:
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "the serving certificate names no hosts"
    have = {str(n) for n in names.get_values_for_type(x509.DNSName)} | {
        str(n) for n in names.get_values_for_type(x509.IPAddress)}
    want = {str(ipaddress.ip_address(h)) if _is_ip(h) else h for h in hosts}
    if have == want:
        return None
    changes = [f"{label}: {', '.join(sorted(found))}"
               for label, found in (("new", want - have), ("gone", have - want)) if found]
    return f"the Service's names or addresses changed ({'; '.join(changes)})"


def serving_problem(data: Mapping[str, bytes], ca_pem: bytes, hosts: Sequence[str],
                    now: dt.datetime) -> str | None:
    """Why the serving certificate in `data` must be re-issued (None: it is good)."""
    if TLS_CERT not in data or TLS_KEY not in data:
        return "there was no serving certificate"
    if data.get(CA_CERT) != ca_pem:
        return "the serving Secret carries another CA"
    try:
        cert = x509.load_pem_x509_certificate(data[TLS_CERT])
        key = serialization.load_pem_private_key(data[TLS_KEY], password=None)
        cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))
    except (ValueError, TypeError, InvalidSignature):
        return "the stored serving certificate is unreadable or not the CA's"
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not _pair(key, cert):
        return "the stored serving key does not belong to its certificate"
    if cert.not_valid_after_utc - now < _RENEW_BEFORE:
        return "the serving certificate expires within 30 days"
    return _hosts_problem(cert, hosts)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _metadata(policy: Policy, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": policy.namespace,
            "labels": naming.managed_labels(policy.name),
            "ownerReferences": [naming.owner_reference(policy.name, policy.uid)]}


def _secret(policy: Policy, name: str, type_: str, data: Mapping[str, bytes]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": _metadata(policy, name),
            "type": type_,
            "data": {key: base64.b64encode(value).decode() for key, value in sorted(data.items())}}


def _kubeconfig(policy: Policy, ips: Sequence[str], ca_pem: bytes) -> str:
    server = (ingest_url(policy, ips[0]) if ips else
              f"https://<clusterIP of {naming.collector_name(policy.name)}>:"
              f"{policy.spec.worker.port}")
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "sealtrail", "cluster": {
            "server": server + "/v1/k8s-audit",
            "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
        "users": [{"name": "kube-apiserver", "user": {"tokenFile": TOKEN_FILE}}],
        "contexts": [{"name": "default",
                      "context": {"cluster": "sealtrail", "user": "kube-apiserver"}}],
        "current-context": "default",
    }
    header = ("# For the kube-apiserver: --audit-webhook-config-file=<this file>. Put the "
              "collector's\n# ingest token (spec.collector.ingestToken) in "
              f"{TOKEN_FILE} on each control-plane node.\n")
    return header + yaml.safe_dump(config, sort_keys=False)


def plan_collector_tls(policy: Policy, ips: Sequence[str], *,
                       ca_secret: Mapping[str, Any] | None,
                       serving_secret: Mapping[str, Any] | None,
                       now: dt.datetime) -> CollectorTlsPlan:
    """The collector's TLS objects for the Service's ClusterIPs `ips`.

    `ca_secret` and `serving_secret` are the Secrets `<collector>-ca` and `<collector>-tls` as
    read from the API (None if absent); what in them is still good is kept as it is.
    """
    hosts = serving_hosts(policy, ips)
    ca_data = _data(ca_secret)
    serving = _data(serving_secret)
    issued = _ca_problem(ca_data, now)
    if issued is not None:
        ca_pem, ca_key = _make_ca(policy, now)
        ca_data = {CA_CERT: ca_pem, CA_KEY: ca_key}
    ca_pem = ca_data[CA_CERT]
    problem = serving_problem(serving, ca_pem, hosts, now)
    if problem is not None:
        cert, key = _issue(ca_pem, ca_data[CA_KEY], hosts, now)
        serving = {CA_CERT: ca_pem, TLS_CERT: cert, TLS_KEY: key}
        issued = issued or problem
    ca_name = naming.collector_ca_name(policy.name)
    return CollectorTlsPlan(
        ca_secret=_secret(policy, ca_name, "Opaque", {CA_CERT: ca_pem, CA_KEY: ca_data[CA_KEY]}),
        serving_secret=_secret(policy, naming.collector_tls_name(policy.name),
                               "kubernetes.io/tls", serving),
        ca_config_map={"apiVersion": "v1", "kind": "ConfigMap",
                       "metadata": _metadata(policy, ca_name),
                       "data": {CA_CERT: ca_pem.decode(),
                                KUBECONFIG_KEY: _kubeconfig(policy, ips, ca_pem)}},
        issued=issued)
