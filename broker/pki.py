"""A small local CA and a server certificate for a self-hosted broker.

Keys are written ``0640`` (``0600`` plus the broker's group when it exists), so the
broker, which drops to user ``mosquitto``, can still read them.
"""

from __future__ import annotations

import datetime as dt
import grp
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from broker.errors import PkiError


@dataclass(frozen=True)
class PkiPaths:
    """Files of the PKI folder."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        """CA certificate (public; devices embed it)."""
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        """CA private key (keep offline in production)."""
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        """Broker certificate."""
        return self.root / "server.crt"

    @property
    def server_key(self) -> Path:
        """Broker private key."""
        return self.root / "server.key"

    @property
    def route_cert(self) -> Path:
        """NATS route certificate (server and client auth: routes verify both ways)."""
        return self.root / "route.crt"

    @property
    def route_key(self) -> Path:
        """NATS route private key."""
        return self.root / "route.key"


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey, *, broker_reads: bool) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    if broker_reads:
        share_with_broker(path, 0o640)


def share_with_broker(path: Path, mode: int) -> None:
    """Give ``path`` to group ``mosquitto`` when that group exists, with ``mode``.

    Args:
        path: File to adjust.
        mode: Permission bits, e.g. ``0o640``.
    """
    try:
        gid = grp.getgrnam("mosquitto").gr_gid
        if os.geteuid() == 0:
            os.chown(path, -1, gid)
    except KeyError:
        pass
    os.chmod(path, mode)


def _name(cn: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "camstack"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


def create_ca(paths: PkiPaths, *, days: int = 3650, cn: str = "camstack local CA") -> None:
    """Create the CA key and self-signed certificate.

    Args:
        paths: Where to write.
        days: Validity.
        cn: Common name.
    """
    paths.root.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=False, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          key_cert_sign=True, crl_sign=True, encipher_only=False,
                          decipher_only=False),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    # Only this tool signs with the CA key: the broker never reads it.
    _write_key(paths.ca_key, key, broker_reads=False)
    paths.ca_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.ca_cert.chmod(0o644)


def create_server_cert(paths: PkiPaths, names: list[str], *, days: int = 825) -> None:
    """Issue the broker certificate from the CA, with ``names`` as SANs.

    Args:
        paths: PKI folder holding the CA.
        names: DNS names and IP addresses clients use to reach the broker.
        days: Validity (825 days: the longest most TLS clients accept).

    Raises:
        PkiError: When the CA is missing or ``names`` is empty.
    """
    _issue(paths, names, paths.server_cert, paths.server_key, days=days, client_auth=False)


def create_route_cert(paths: PkiPaths, names: list[str], *, days: int = 825) -> None:
    """Issue the NATS route certificate: SANs ``names``, server *and* client auth.

    Every node presents it both when it accepts a route and when it dials one, and
    nats-server verifies it both ways; Go checks the client-auth usage of a client's
    certificate, which the broker certificate (server auth only) lacks.

    Args:
        paths: PKI folder holding the CA.
        names: The nodes' host names (each node dials the others by name).
        days: Validity.

    Raises:
        PkiError: When the CA is missing or ``names`` is empty.
    """
    _issue(paths, names, paths.route_cert, paths.route_key, days=days, client_auth=True)


def ensure_route_cert(paths: PkiPaths, names: list[str]) -> bool:
    """Issue the route certificate unless one naming exactly ``names`` exists.

    Returns:
        True when a new one was issued (running nodes need a restart to load it).
    """
    if paths.route_cert.exists() and paths.route_key.exists():
        try:
            if sorted(certificate_names(paths.route_cert)) == sorted(names):
                return False
        except PkiError:
            pass
    create_route_cert(paths, names)
    return True


def _issue(paths: PkiPaths, names: list[str], cert_file: Path, key_file: Path, *,
           days: int, client_auth: bool) -> None:
    if not names:
        raise PkiError("at least one server name is needed")
    try:
        ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    except FileNotFoundError as exc:
        raise PkiError(f"CA missing: {exc.filename}; run `camstack init` first") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise PkiError("CA key is not an EC key")
    usages = [ExtendedKeyUsageOID.SERVER_AUTH]
    if client_auth:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(_san(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(key_file, key, broker_reads=True)
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    cert_file.chmod(0o644)


def ensure_pki(paths: PkiPaths, names: list[str]) -> bool:
    """Create the CA and server certificate unless both exist.

    Args:
        paths: PKI folder.
        names: Server SANs for a new certificate.

    Returns:
        True when something was created.
    """
    created = False
    if not (paths.ca_cert.exists() and paths.ca_key.exists()):
        create_ca(paths)
        created = True
    else:
        # Folders made before the CA key became owner-only are tightened on the way.
        paths.ca_key.chmod(0o600)
    if created or not (paths.server_cert.exists() and paths.server_key.exists()):
        create_server_cert(paths, names)
        created = True
    return created


def certificate_names(cert_file: Path) -> list[str]:
    """DNS names and IP addresses of a certificate's subject alternative names, in order.

    Args:
        cert_file: A PEM certificate (the broker's ``server.crt``).

    Returns:
        The names as text (IP addresses in their usual notation).

    Raises:
        PkiError: When the file is missing, unreadable or has no SAN extension.
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except FileNotFoundError:
        raise PkiError(f"no server certificate at {cert_file}; run `camstack init`") from None
    except (ValueError, x509.ExtensionNotFound) as exc:
        raise PkiError(f"cannot read the names of {cert_file}: {exc}") from None
    return [str(n.value) for n in san
            if isinstance(n, (x509.DNSName, x509.IPAddress))]
