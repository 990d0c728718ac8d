"""TLS for the secured local broker: a certificate authority of its own and one certificate for
``localhost`` that every node presents, made once in ``<data_dir>/security/tls/``.

* ``ca.pem``: the authority's certificate, what clients trust (``ESTOP_SSL_CA_LOCATION``; Kafka's
  own clients between nodes read it as a PEM trust store). Public.
* ``ca-key.pem``: the authority's private key (mode 0600), kept to sign a new broker certificate.
* ``broker.p12``: the nodes' private key and certificate chain, a PKCS#12 key store (mode 0600)
  whose password is in ``keystore-password`` (mode 0600) and in the rendered server.properties
  (mode 0600), never on a command line.

Traffic between clients and brokers, and between the nodes, is then encrypted and the brokers
authenticated (``SASL_SSL``); SCRAM authenticates the clients."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from streams.security import credentials
from streams.settings import Settings

VALID_DAYS = 3650
HOSTS = ("localhost",)
ADDRESSES = ("127.0.0.1", "::1")


@dataclass(frozen=True)
class BrokerTls:
    ca: Path
    keystore: Path
    password: str


def folder(settings: Settings) -> Path:
    return credentials.security_dir(settings) / "tls"


def ca_file(settings: Settings) -> Path:
    return folder(settings) / "ca.pem"


def broker_tls(settings: Settings) -> BrokerTls:
    """The local broker's authority and key store, made on first use."""
    home = folder(settings)
    ca, keystore, secret = home / "ca.pem", home / "broker.p12", home / "keystore-password"
    if not (ca.exists() and keystore.exists() and secret.exists()):
        _make(home, ca, keystore, secret)
    return BrokerTls(ca, keystore, secret.read_text().strip())


def _private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "estop local broker"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _make(home: Path, ca_path: Path, keystore_path: Path, secret_path: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    since, until = now - dt.timedelta(minutes=5), now + dt.timedelta(days=VALID_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("estop local CA")).issuer_name(_name("estop local CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(since).not_valid_after(until)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in HOSTS]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ADDRESSES]
    cert = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(since).not_valid_after(until)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
                                                  x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    password = secrets.token_urlsafe(24)
    # PBES2 with AES-256 and PBKDF2-HMAC-SHA256: what Java 17's PKCS12 key store reads.
    encryption = (serialization.PrivateFormat.PKCS12.encryption_builder()
                  .kdf_rounds(50000)
                  .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
                  .hmac_hash(hashes.SHA256())
                  .build(password.encode()))
    keystore = pkcs12.serialize_key_and_certificates(b"kafka", key, cert, [ca], encryption)
    _private(home / "ca-key.pem", ca_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    _private(keystore_path, keystore)
    _private(secret_path, password.encode())
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
