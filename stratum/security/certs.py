"""A private CA and the certificates one host needs, for ``stratum tls init`` and tests.

A deployment with a real PKI points the ``tls`` settings at its own files instead; this is
for the machine that has none, so that turning TLS on takes one command. ECDSA P-256 keys:
the handshake costs a fraction of RSA-2048's on both sides, which matters to a gateway
that opens connections to many replicas.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stratum.errors import ConflictError

_DEFAULT_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class TlsFiles:
    """What ``make_tls`` wrote: a CA, a server certificate for the given hosts (gateways,
    the control plane and replicas present it) and a client certificate (what gateways
    and the control plane present to replicas under mutual TLS)."""

    folder: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def settings(self, *, mutual: bool = False) -> dict[str, object]:
        """The settings (as a YAML/JSON-able dict) that turn TLS on with these files."""
        server = {"cert_file": str(self.server_cert), "key_file": str(self.server_key)}
        replica = server | ({"client_ca_file": str(self.ca_cert)} if mutual else {})
        client: dict[str, str] = {"ca_file": str(self.ca_cert)}
        if mutual:
            client |= {"cert_file": str(self.client_cert), "key_file": str(self.client_key)}
        return {"gateway": {"tls": dict(server)}, "control": {"tls": dict(server)},
                "serve": {"tls": replica}, "client_tls": client}


def make_tls(folder: Path, hosts: list[str] | None = None, *, days: int = 825,
             force: bool = False) -> TlsFiles:
    """Write a new CA and a server and a client certificate into ``folder`` (keys 0600).

    ``hosts``: names and IP addresses the server certificate is valid for, besides
    127.0.0.1, ::1 and localhost. Refuses to overwrite an existing CA unless ``force``:
    certificates issued by the old one would stop being trusted.
    """
    folder = Path(folder).expanduser().resolve()
    files = TlsFiles(folder, folder / "ca.pem", folder / "ca.key", folder / "server.pem",
                     folder / "server.key", folder / "client.pem", folder / "client.key")
    if files.ca_cert.exists() and not force:
        raise ConflictError(f"{files.ca_cert} exists: a new CA would untrust every "
                            "certificate the old one issued", hint="pass --force to replace it")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Stratum local CA")])
    ca = (_builder(ca_name, ca_name, ca_key.public_key(), now, days)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False,
                                       False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    _write(files.ca_key, _key_pem(ca_key))
    _write(files.ca_cert, ca.public_bytes(serialization.Encoding.PEM))
    names = list(dict.fromkeys([*_DEFAULT_HOSTS, *(hosts or [])]))
    _issue(ca, ca_key, "stratum server", names, ExtendedKeyUsageOID.SERVER_AUTH,
           files.server_cert, files.server_key, now, days)
    _issue(ca, ca_key, "stratum client", [], ExtendedKeyUsageOID.CLIENT_AUTH,
           files.client_cert, files.client_key, now, days)
    return files


def _issue(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, cn: str,
           hosts: list[str], usage: x509.ObjectIdentifier, cert_path: Path, key_path: Path,
           now: dt.datetime, days: int) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    builder = (_builder(subject, ca.subject, key.public_key(), now, days)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca_key.public_key()), critical=False))
    if hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write(key_path, _key_pem(key))
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             now: dt.datetime, days: int) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days)))


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes) -> None:
    """Atomic, and 0600 from the first byte (a key is never readable by others)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    tmp.replace(path)


__all__ = ["TlsFiles", "make_tls"]
