"""Credentials provisioned by ``pricure admin``: a self-signed CA, server certificates, bearer tokens.

* The CA (``ca.pem`` + ``ca.key``) signs one certificate per server host
  (its IP address or DNS name in the subjectAltName); clients and owners
  verify the servers against ``ca.pem``.
* A client or owner is identified by a bearer token (256 random bits) that
  ``pricure admin add`` writes once to a token file (mode 0600). Each
  server's data directory keeps only ``sha256(token)`` with the role and
  identity (``credentials.json``): a stolen data directory yields no token,
  and no token is ever logged.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import threading
from pathlib import Path
from typing import Any, Optional

ROLES = ("client", "owner")
IDENTITY = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
CREDENTIALS_FILE = "credentials.json"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def add_credential(*, role: str, identity: str, token_file: Path, data_dirs: list[Path]) -> bool:
    """Register ``identity`` as ``role`` in every data dir; returns True if a new token was created.

    The token is read from ``token_file`` if it exists (to register the same
    identity on another host), else generated and written there (0600). A
    token already registered for another role or identity in one of the data
    dirs is refused (``ValueError``), before anything is written.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if not IDENTITY.match(identity):
        raise ValueError(f"identity must be 1-64 letters, digits, '_', '.', '-', got {identity!r}")
    token_file = Path(token_file)
    created = not token_file.exists()
    token = secrets.token_urlsafe(32) if created else read_token(token_file)
    tables = []
    for data_dir in data_dirs:  # check every data dir before writing anything
        path = Path(data_dir) / CREDENTIALS_FILE
        table = json.loads(path.read_text()) if path.exists() else {}
        other = table.get(token_hash(token))
        if other is not None and (other["role"], other["identity"]) != (role, identity):
            raise ValueError(f"the token in {token_file} already belongs to {other['role']} {other['identity']} "
                             f"in {data_dir}; refusing to reuse it for {role} {identity} (give a new --token-file)")
        tables.append((path, table))
    if created:
        _write_private(token_file, (token + "\n").encode())
    for path, table in tables:
        table = {h: v for h, v in table.items() if not (v["role"] == role and v["identity"] == identity)}
        table[token_hash(token)] = {"role": role, "identity": identity}
        _write_private(path, json.dumps(table, indent=1, sort_keys=True).encode())
    return created


def revoke_credential(*, identity: str, data_dirs: list[Path], role: Optional[str] = None) -> int:
    """Remove every token of ``identity`` (of ``role``, if given) from every data dir; how many entries went.

    A running server re-reads ``credentials.json`` when it changes, so the
    revoked token is refused (HTTP 401) from its next request on. An identity
    found in none of the data dirs is an error (``ValueError``), before
    anything is written; the token file itself is left alone (delete it).
    """
    if role is not None and role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    tables, removed = [], 0
    for data_dir in data_dirs:  # read every data dir before writing anything
        path = Path(data_dir) / CREDENTIALS_FILE
        table = json.loads(path.read_text()) if path.exists() else {}
        kept = {h: v for h, v in table.items()
                if not (v["identity"] == identity and (role is None or v["role"] == role))}
        removed += len(table) - len(kept)
        tables.append((path, kept, len(kept) != len(table)))
    if removed == 0:
        who = f"{role} {identity}" if role else identity
        raise ValueError(f"{who} has no credential in {', '.join(str(d) for d in data_dirs)}")
    for path, kept, changed in tables:
        if changed:
            _write_private(path, json.dumps(kept, indent=1, sort_keys=True).encode())
    return removed


def read_token(token_file: Path) -> str:
    token = Path(token_file).read_text().strip()
    if not token:
        raise ValueError(f"the token file {token_file} is empty")
    return token


class CredentialTable:
    """A server's view of ``credentials.json``: token -> (role, identity); re-read when the file changes."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / CREDENTIALS_FILE
        self._lock = threading.Lock()
        self._stamp: Optional[tuple] = None
        self._table: dict = {}

    def lookup(self, token: Optional[str]) -> Optional[tuple[str, str]]:
        if not token:
            return None
        with self._lock:
            try:
                stat = self.path.stat()
                stamp = (stat.st_mtime_ns, stat.st_size)
                if stamp != self._stamp:
                    self._table = json.loads(self.path.read_text())
                    self._stamp = stamp
            except (OSError, ValueError):
                self._table, self._stamp = {}, None
            wanted = token_hash(token)
            for stored, entry in self._table.items():  # constant-time comparison of the hashes
                if hmac.compare_digest(stored, wanted):
                    return entry["role"], entry["identity"]
        return None


def make_ca(out_dir: Path, *, days: int = 365) -> tuple[Path, Path]:
    """A self-signed CA: ``ca.pem`` (public) and ``ca.key`` (0600, keep offline)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pricure deployment CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    return _write_pair(Path(out_dir), "ca", key, cert)


def _write_pair(out_dir: Path, name: str, key: Any, cert: Any) -> tuple[Path, Path]:
    """``NAME.key`` (private, 0600, unencrypted PKCS8 PEM) and ``NAME.pem`` in ``out_dir``."""
    from cryptography.hazmat.primitives import serialization

    _write_private(out_dir / f"{name}.key", key.private_bytes(serialization.Encoding.PEM,
                                                              serialization.PrivateFormat.PKCS8,
                                                              serialization.NoEncryption()))
    (out_dir / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out_dir / f"{name}.pem", out_dir / f"{name}.key"


def make_server_cert(ca_dir: Path, host: str, out_dir: Path, *, days: int = 365) -> tuple[Path, Path]:
    """A server certificate for ``host`` (IP or DNS name) signed by the CA in ``ca_dir``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_dir = Path(ca_dir)
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        alt = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt = x509.DNSName(host)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return _write_pair(Path(out_dir), "server", key, cert)
