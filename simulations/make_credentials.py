"""Make the files a secure Flower deployment needs: a CA, a SuperLink TLS certificate, node keys.

    python simulations/make_credentials.py --out certs --nodes 2 --host 127.0.0.1 --host localhost

writes into ``--out`` (which must be empty or absent, so that a CA key is never overwritten):

=====================  ==============================================================  ==========
file                   what it is                                                      who holds it
=====================  ==============================================================  ==========
``ca.crt``             self-signed root certificate (EC P-256)                         everyone
``ca.key``             the CA's private key (signs ``server.pem``)                     whoever runs the CA
``server.pem``         the SuperLink's TLS certificate, signed by the CA, valid for     the SuperLink
                       every ``--host`` (IP addresses and DNS names, as SANs)
``server.key``         its private key                                                 the SuperLink
``supernode-K.key``    SuperNode K's authentication key (EC P-384, OpenSSH format)     SuperNode K
``supernode-K.pub``    its public key, registered with ``flwr supernode register``     the federation's operator
=====================  ==============================================================  ==========

Private keys are written with mode 600. The formats are the ones Flower 1.42 reads:
``flower-superlink --ssl-ca-certfile/--ssl-certfile/--ssl-keyfile`` take PEM files,
``flower-supernode --auth-supernode-private-key`` takes an OpenSSH EC private key and
``flwr supernode register`` an OpenSSH EC public key on a NIST curve. ``simulations/deploy_local.sh
--secure`` makes a throwaway set with this script; docs/deployment.md shows the same files made
with ``openssl`` and ``ssh-keygen``, for a deployment across machines.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PRIVATE_MODE = 0o600


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedcond"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _subject_alternative_names(hosts: list[str]) -> x509.SubjectAlternativeName:
    """IP addresses become IP SANs, anything else a DNS SAN (TLS clients check one or the other)."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_ca(*, days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed root CA that may sign leaf certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fedcond throwaway CA"))
        .issuer_name(_name("fedcond throwaway CA"))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_server_certificate(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, *, hosts: list[str], days: int
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A TLS server certificate for ``hosts`` (SANs), signed by the CA."""
    if not hosts:
        raise ValueError("a server certificate needs at least one --host (the address SuperNodes connect to)")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(_subject_alternative_names(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _write(path: Path, data: bytes, *, private: bool) -> None:
    if private:
        # created with mode 600 from the start: the key is never readable by others, even briefly
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_node_key(out: Path, name: str) -> tuple[Path, Path]:
    """Write ``name.key`` (OpenSSH EC P-384 private key, mode 600) and ``name.pub``; return both paths."""
    key = ec.generate_private_key(ec.SECP384R1())
    private_path, public_path = out / f"{name}.key", out / f"{name}.pub"
    _write(private_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                           serialization.NoEncryption()), private=True)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(public_path, public + f" {name}\n".encode(), private=False)
    return private_path, public_path


def make_credentials(out: Path, *, nodes: int, hosts: list[str], days: int) -> list[Path]:
    """Write the CA, the SuperLink's certificate and ``nodes`` node key pairs into ``out``.

    Parameters
    ----------
    out : Path
        Target folder; created if absent, refused if it holds anything.
    nodes : int
        Number of SuperNode key pairs (``supernode-0`` ...), 0 or more.
    hosts : list[str]
        Addresses the SuperLink's certificate is valid for (IP addresses or DNS names).
    days : int
        Validity of the certificates, in days (at least 1).

    Returns
    -------
    list[Path]
        Every file written.

    Raises
    ------
    ValueError
        ``nodes`` < 0, ``days`` < 1, no host, or a non-empty ``out``.
    """
    if nodes < 0:
        raise ValueError(f"--nodes must be 0 or more, got {nodes}")
    if days < 1:
        raise ValueError(f"--days must be at least 1, got {days}")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: choose an empty folder (a CA key is never overwritten)")
    out.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = make_ca(days=days)
    server_key, server_cert = make_server_certificate(ca_key, ca_cert, hosts=hosts, days=days)
    written = [out / "ca.crt", out / "ca.key", out / "server.pem", out / "server.key"]
    _write(written[0], ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(written[1], _pem_key(ca_key), private=True)
    _write(written[2], server_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(written[3], _pem_key(server_key), private=True)
    for k in range(nodes):
        written.extend(write_node_key(out, f"supernode-{k}"))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="empty or absent folder for the files")
    parser.add_argument("--nodes", type=int, default=2, help="SuperNode key pairs to make (default 2)")
    parser.add_argument("--host", action="append", dest="hosts", default=None,
                        help="an address the SuperLink is reached at (repeatable; default 127.0.0.1 and localhost)")
    parser.add_argument("--days", type=int, default=30, help="certificate validity in days (default 30)")
    args = parser.parse_args(argv)
    try:
        written = make_credentials(args.out, nodes=args.nodes, hosts=args.hosts or ["127.0.0.1", "localhost"],
                                   days=args.days)
    except ValueError as exc:
        print(f"make_credentials: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
