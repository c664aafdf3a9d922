"""TLS and node-authentication files, checked before any process starts: PEM certificates and
private keys (readable, parseable, the certificate naming the host it serves), the SuperLink's
authorized SuperNode keys, and the key a party authenticates with.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.pids import FlowerProcessError

__all__ = [
    "AuthorizedKey",
    "CredentialError",
    "TLSFiles",
    "check_auth_private_key",
    "check_pem_certificate",
    "read_authorized_keys",
]


class CredentialError(FlowerProcessError):
    """A certificate or key file is missing, unreadable, malformed, or does not fit the others."""


def _read_credential(path: Path, what: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise CredentialError(f"{what} not found: {path}")
    try:
        return path.read_bytes()
    except OSError as err:
        raise CredentialError(f"{what} {path} is not readable: {err.strerror}") from err


def check_pem_certificate(path: Path, what: str = "certificate file") -> Any:
    """Load one PEM X.509 certificate (the first of the file) or raise naming the file.

    :returns: the :class:`cryptography.x509.Certificate`.
    :raises CredentialError: missing, unreadable, not PEM, or not a certificate.
    """
    from cryptography import x509  # heavy (cryptography's hazmat): TLS / node-auth only

    data = _read_credential(path, what)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise CredentialError(f"{what} {path} is not a PEM certificate (no '-----BEGIN CERTIFICATE-----' line)")
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as err:
        raise CredentialError(f"{what} {path} is not a valid PEM certificate: {err}") from err


def _check_pem_private_key(path: Path, what: str = "private key file") -> Any:
    from cryptography.hazmat.primitives import serialization  # heavy (cryptography's hazmat): TLS / node-auth only

    data = _read_credential(path, what)
    if b"PRIVATE KEY-----" not in data:
        raise CredentialError(f"{what} {path} is not a PEM private key (no '-----BEGIN ... PRIVATE KEY-----' line)")
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as err:  # TypeError: the key is encrypted with a passphrase
        raise CredentialError(
            f"{what} {path} cannot be loaded (a passphrase-protected key is not supported): {err}"
        ) from err


def _public_bytes(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization  # heavy (cryptography's hazmat): TLS / node-auth only

    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _names_in_certificate(cert: Any) -> list[str]:
    from cryptography import x509  # heavy (cryptography's hazmat): TLS / node-auth only

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in san.get_values_for_type(x509.IPAddress)] + san.get_values_for_type(x509.DNSName)


def _host_matches(host: str, names: Sequence[str]) -> bool:
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        address = None
    for name in names:
        if address is not None:
            try:
                if ipaddress.ip_address(name) == address:
                    return True
            except ValueError:
                continue
        elif name.lower() == host.lower() or (
            name.startswith("*.") and host.lower().endswith(name[1:].lower()) and host.count(".") == name.count(".")
        ):
            return True
    return False


@dataclass(frozen=True)
class TLSFiles:
    """Certificates for a TLS SuperLink (all three PEM paths)."""

    ca_certfile: Path
    certfile: Path
    keyfile: Path

    def check(self, host: str | None = None) -> None:
        """Check the three files before any process starts.

        Each must exist and be readable PEM; the key must belong to the certificate, the CA must
        have issued it, and it must not be expired. With ``host``, the certificate's
        subjectAltName must name it (the server's own ``flwr run`` connects to that address).

        :raises CredentialError: naming the file and what is wrong with it.
        """
        from cryptography.exceptions import InvalidSignature  # heavy (cryptography's hazmat): TLS / node-auth only

        ca = check_pem_certificate(self.ca_certfile, "CA certificate file (--ssl-ca-certfile)")
        cert = check_pem_certificate(self.certfile, "server certificate file (--ssl-certfile)")
        key = _check_pem_private_key(self.keyfile, "server key file (--ssl-keyfile)")
        if _public_bytes(key.public_key()) != _public_bytes(cert.public_key()):
            raise CredentialError(f"server key file {self.keyfile} does not belong to the certificate {self.certfile}")
        try:  # name and signature: two CAs may share a name
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature) as err:
            raise CredentialError(
                f"server certificate {self.certfile} (issuer {cert.issuer.rfc4514_string()!r}) was not signed by "
                f"the CA of {self.ca_certfile} ({ca.subject.rfc4514_string()!r}): {str(err) or 'the signature does not verify'}"
            ) from err
        now = dt.datetime.now(dt.UTC)
        for path, item in ((self.certfile, cert), (self.ca_certfile, ca)):
            if not item.not_valid_before_utc <= now <= item.not_valid_after_utc:
                raise CredentialError(
                    f"certificate {path} is not valid now (valid from {item.not_valid_before_utc} "
                    f"to {item.not_valid_after_utc})"
                )
        if host is not None:
            names = _names_in_certificate(cert)
            if not _host_matches(host, names):
                raise CredentialError(
                    f"server certificate {self.certfile} does not name {host} in its subjectAltName "
                    f"(it names {names or 'nothing'}); make one with scripts/make_certs.sh OUT_DIR {host} ..."
                )


def check_auth_private_key(path: Path) -> None:
    """Check a SuperNode authentication key: an OpenSSH private key on a NIST EC curve.

    Flower's ``flower-supernode --auth-supernode-private-key`` derives the public key from it.

    :raises CredentialError: naming the file.
    """
    from cryptography.exceptions import UnsupportedAlgorithm  # heavy (cryptography's hazmat): TLS / node-auth only
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    data = _read_credential(path, "node authentication key (--auth-private-key)")
    try:
        key = load_ssh_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise CredentialError(
            f"node authentication key {path} is not an unencrypted OpenSSH private key "
            f"(make one with: ssh-keygen -t ecdsa -b 384 -N '' -f {path}): {err}"
        ) from err
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CredentialError(
            f"node authentication key {path} is a {type(key).__name__}; Flower needs an EC key "
            f"(ssh-keygen -t ecdsa -b 384)"
        )


@dataclass(frozen=True)
class AuthorizedKey:
    """One party's public key as registered with the SuperLink.

    :param text: the OpenSSH line ``ecdsa-sha2-nistp384 AAAA... [comment]``.
    :param source: ``FILE:LINE`` it came from (for error messages and the node's name).
    :param comment: the key's comment (e.g. ``party0``), or ``""``.
    """

    text: str
    source: str
    comment: str = ""


def read_authorized_keys(path: Path) -> list[AuthorizedKey]:
    """Read the parties' public keys: one OpenSSH public key per line, ``#`` comments and blank
    lines skipped (e.g. ``cat party*.pub > parties.pub``).

    Each key must be an EC key on a NIST curve (what ``flwr supernode register`` accepts).

    :raises CredentialError: naming ``FILE:LINE`` of a malformed or duplicated key, or an empty file.
    """
    from cryptography.exceptions import UnsupportedAlgorithm  # heavy (cryptography's hazmat): TLS / node-auth only
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    data = _read_credential(path, "public key list (--auth-public-keys)")
    keys: list[AuthorizedKey] = []
    seen: dict[bytes, str] = {}
    for number, raw in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        source = f"{path}:{number}"
        try:
            key = load_ssh_public_key(line.encode())
        except (ValueError, UnsupportedAlgorithm) as err:
            raise CredentialError(f"{source}: not an OpenSSH public key ({err})") from err
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise CredentialError(
                f"{source}: a {type(key).__name__}; Flower needs an EC key (ssh-keygen -t ecdsa -b 384)"
            )
        der = _public_bytes(key)
        if der in seen:
            raise CredentialError(f"{source}: the same key as {seen[der]}")
        seen[der] = source
        parts = line.split(maxsplit=2)
        keys.append(AuthorizedKey(text=line, source=source, comment=parts[2] if len(parts) > 2 else ""))
    if not keys:
        raise CredentialError(f"public key list {path} holds no key")
    return keys
