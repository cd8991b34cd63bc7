"""A real SMTP sink (aiosmtpd) on a free loopback port, optionally with STARTTLS, and per-recipient failures."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    raw: bytes

    @property
    def message(self) -> Message:
        return message_from_bytes(self.raw, policy=default_policy)


@dataclass
class SinkHandler:
    """``reply_for[recipient]`` = an SMTP reply (``"451 4.3.0 try later"``) given at DATA instead of accepting."""

    received: list[Received] = field(default_factory=list)
    reply_for: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        for rcpt in envelope.rcpt_tos:
            if rcpt in self.reply_for:
                return self.reply_for[rcpt]
        with self.lock:
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.content)))
        return "250 OK"


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 (cert PEM path, key PEM path)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "smtp-cert.pem"
    key_path = directory / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@dataclass
class SmtpSink:
    handler: SinkHandler
    port: int
    cafile: Path | None = None

    @property
    def received(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.received)

    def url(self, *, starttls: bool = False, timeout_s: float | None = None) -> str:
        query = []
        if starttls:
            query.append("starttls=true")
            if self.cafile is not None:
                query.append(f"cafile={self.cafile}")
        if timeout_s is not None:
            query.append(f"timeout_s={timeout_s}")
        return f"smtp://127.0.0.1:{self.port}" + ("?" + "&".join(query) if query else "")


@contextmanager
def smtp_sink(*, tls_dir: Path | None = None) -> Iterator[SmtpSink]:
    """Start aiosmtpd on 127.0.0.1 (STARTTLS required when ``tls_dir`` is given); stop it afterwards."""
    handler = SinkHandler()
    port = free_port()
    kwargs: dict[str, Any] = {}
    cafile: Path | None = None
    if tls_dir is not None:
        cert_path, key_path = self_signed_cert(tls_dir)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_path, key_path)
        kwargs.update(tls_context=context, require_starttls=True)
        cafile = cert_path
    controller = Controller(handler, hostname="127.0.0.1", port=port, ready_timeout=5, **kwargs)
    controller.start()
    try:
        yield SmtpSink(handler=handler, port=port, cafile=cafile)
    finally:
        controller.stop()
