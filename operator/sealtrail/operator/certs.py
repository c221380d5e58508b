"""The admission webhook's certificates: a private CA, a serving certificate, their renewal.

The API server calls the webhook over HTTPS and trusts only the `caBundle` of the webhook
configuration. Every replica must serve a certificate that bundle trusts, so the CA and the
serving certificate live in one Secret in the operator's namespace (`CertificateSet`, made
once by whichever replica comes first) and every replica serves from it.

Renewal never leaves a moment in which the API server trusts nothing that is served
(`plan_certificates`, pure, run by the leader):

- the serving certificate is renewed by the same CA when a third of its life is left, so
  the bundle does not change;
- the CA is renewed when a third of its life is left in two steps: first the new CA joins
  the bundle beside the old one (the leader publishes it), and only a check later, once the
  API server trusts both, does the serving certificate come from the new CA; the old CA
  leaves the bundle when it expires.

With cert-manager, the chart mounts a certificate from a CA Issuer instead and this is not used.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertificateSet",
    "Lifetimes",
    "general_names",
    "plan_certificates",
]



def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def general_names(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """Subject alternative names: an IP address as one, anything else as a DNS name."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


# -- the shared set and its renewal --------------------------------------------------------------


@dataclass(frozen=True)
class Lifetimes:
    """How long certificates live (the defaults: a 5-year CA, a 1-year serving certificate)."""

    ca: dt.timedelta = dt.timedelta(days=5 * 365)
    leaf: dt.timedelta = dt.timedelta(days=365)


@dataclass(frozen=True)
class CertificateSet:
    """What the Secret holds: the CA that signs, its key, the serving pair, the bundle to trust.

    `next_ca`/`next_ca_key` are set between the two steps of a CA renewal.
    """

    ca: bytes
    ca_key: bytes
    cert: bytes
    key: bytes
    bundle: bytes
    next_ca: bytes = b""
    next_ca_key: bytes = b""

    KEYS: ClassVar[tuple[str, ...]] = ("ca.crt", "ca.key", "tls.crt", "tls.key", "bundle.crt",
                                       "next-ca.crt", "next-ca.key")

    def to_data(self) -> dict[str, bytes]:
        """The Secret's `data` (raw bytes; the caller base64-encodes)."""
        values = (self.ca, self.ca_key, self.cert, self.key, self.bundle, self.next_ca,
                  self.next_ca_key)
        return {name: value for name, value in zip(self.KEYS, values, strict=True) if value}

    @classmethod
    def from_data(cls, data: dict[str, bytes]) -> CertificateSet | None:
        """Parse the Secret's data; None when a required part is missing."""
        if not all(data.get(name) for name in cls.KEYS[:5]):
            return None
        return cls(*(data.get(name, b"") for name in cls.KEYS))


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _new_ca(now: dt.datetime, life: dt.timedelta) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"sealtrail-webhook-ca-{now:%Y%m%d%H%M%S}")
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + life)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return _pem(cert), _key_pem(key)


def _new_leaf(ca_pem: bytes, ca_key_pem: bytes, hosts: list[str], now: dt.datetime,
              life: dt.timedelta) -> tuple[bytes, bytes]:
    ca = x509.load_pem_x509_certificate(ca_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError("the webhook CA key is not an EC key")
    names = general_names(hosts)
    key = ec.generate_private_key(ec.SECP256R1())
    end = min(now + life, ca.not_valid_after_utc)  # never outlive the CA that vouches for it
    cert = (
        x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return _pem(cert), _key_pem(key)


def _certs(bundle: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(bundle) if bundle.strip() else []


def _due(cert: x509.Certificate, now: dt.datetime) -> bool:
    """A third of its life or less left."""
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after_utc - now <= life / 3


def _hosts_of(cert: x509.Certificate) -> set[str]:
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {str(n) for n in names.get_values_for_type(x509.DNSName)} | {
        str(ip) for ip in names.get_values_for_type(x509.IPAddress)}


def plan_certificates(  # noqa: PLR0911 - one return per step of the renewal, in order
        current: CertificateSet | None, hosts: list[str], now: dt.datetime,
                      lifetimes: Lifetimes, *, bundle_published: bool) -> CertificateSet:
    """The set to hold next; `current` itself when nothing is due.

    `bundle_published` says the API server's configuration already carries `current.bundle`:
    only then may a serving certificate from a new CA be served.
    """
    if current is None:
        ca, ca_key = _new_ca(now, lifetimes.ca)
        cert, key = _new_leaf(ca, ca_key, hosts, now, lifetimes.leaf)
        return CertificateSet(ca, ca_key, cert, key, ca)
    ca_cert = x509.load_pem_x509_certificate(current.ca)
    if current.next_ca:
        if not bundle_published:
            return current  # step 1 done; the leader has yet to publish the bundle
        cert, key = _new_leaf(current.next_ca, current.next_ca_key, hosts, now, lifetimes.leaf)
        return CertificateSet(current.next_ca, current.next_ca_key, cert, key, current.bundle)
    if _due(ca_cert, now):
        next_ca, next_key = _new_ca(now, lifetimes.ca)
        return CertificateSet(current.ca, current.ca_key, current.cert, current.key,
                              current.bundle + next_ca, next_ca, next_key)
    live = [c for c in _certs(current.bundle) if c.not_valid_after_utc > now]
    bundle = b"".join(_pem(c) for c in live) or current.ca
    leaf = x509.load_pem_x509_certificate(current.cert)
    if _due(leaf, now) or _hosts_of(leaf) != set(hosts):
        cert, key = _new_leaf(current.ca, current.ca_key, hosts, now, lifetimes.leaf)
        return CertificateSet(current.ca, current.ca_key, cert, key, bundle)
    if bundle != current.bundle:
        return CertificateSet(current.ca, current.ca_key, current.cert, current.key, bundle)
    return current
