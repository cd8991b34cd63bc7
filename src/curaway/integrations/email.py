"""Email delivery seam: one small protocol, three real backends and a shipped in-memory fake (DESIGN §6).

Backends (``CURAWAY_EMAIL_BACKEND``):

- ``outbox`` (the embedded default): one ``.eml`` file per message under ``settings.data_dir / "outbox"``, written
  atomically and named after the message's idempotency key, so a retried send overwrites instead of duplicating.
  The ops page can list them with :meth:`OutboxEmailBackend.list_messages`.
- ``smtp``: aiosmtplib against ``CURAWAY_SMTP_URL`` — ``smtp://user:pass@host:587?starttls=true`` (STARTTLS),
  ``smtps://user:pass@host:465`` (implicit TLS), ``smtp://host:25`` (plain). Query options: ``starttls``,
  ``timeout_s``, ``cafile`` (a PEM bundle to trust instead of the system store), ``verify`` (``false`` only for
  local testing).
- ``console``: prints the message to a stream (stdout by default) for development.
- :class:`FakeEmailBackend`: in memory, for tests; can fail after N sends or for chosen recipients.

Every failure is translated at the boundary: :class:`EmailTemporaryError` (a ``RetryableError``: SMTP 4xx,
timeouts, connection trouble) and :class:`EmailRejectedError` (a ``PermanentError``: SMTP 5xx, a malformed
address). Messages name the SMTP code, never the recipient or the content.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import re
import ssl
import sys
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, parseaddr
from pathlib import Path
from typing import Any, Protocol, TextIO, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from curaway.errors import ConfigurationError, PermanentError, RetryableError
from curaway.settings import Settings
from curaway.values import parse_bool

T = TypeVar("T")

DEFAULT_SMTP_TIMEOUT_S = 30.0


class EmailTemporaryError(RetryableError):
    """The provider could not take the message now (4xx, timeout, connection); the same send may work later."""

    code = "email_temporary"


class EmailRejectedError(PermanentError):
    """The provider refused the message for good (5xx, bad address); retrying cannot help."""

    code = "email_rejected"


@dataclass(frozen=True)
class OutgoingEmail:
    """One message. ``idempotency_key`` is opaque (the outbox row's dedup key) and never holds PHI."""

    idempotency_key: str
    to: str
    subject: str
    text: str
    html: str | None = None
    from_addr: str = "Curaway <no-reply@curaway.example>"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SendReceipt:
    provider_message_id: str
    backend: str


class EmailBackend(Protocol):
    """Send one message or raise ``EmailTemporaryError`` / ``EmailRejectedError``."""

    name: str

    def send(self, message: OutgoingEmail) -> SendReceipt: ...


_ADDRESS = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+$")


def validate_address(address: str) -> str:
    _display, addr = parseaddr(address)
    if not addr or not _ADDRESS.match(addr) or "\n" in address or "\r" in address:
        raise EmailRejectedError("recipient address is malformed", code="email_bad_address")
    return addr


def message_id_for(key: str, *, domain: str = "curaway.local") -> str:
    """A stable Message-ID per idempotency key (receivers can dedupe a retried send)."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return f"<{digest}@{domain}>"


def build_mime(message: OutgoingEmail) -> EmailMessage:
    """A MIME message with a plain-text part and, when given, an HTML alternative."""
    validate_address(message.to)
    for value in (message.subject, message.from_addr):
        if "\n" in value or "\r" in value:
            raise EmailRejectedError("header value contains a line break", code="email_bad_header")
    mime = EmailMessage(policy=SMTP_POLICY)
    mime["From"] = message.from_addr
    mime["To"] = message.to
    mime["Subject"] = message.subject
    mime["Date"] = formatdate(usegmt=True)
    mime["Message-ID"] = message_id_for(message.idempotency_key)
    for name, value in message.headers.items():
        mime[name] = value
    mime.set_content(message.text)
    if message.html is not None:
        mime.add_alternative(message.html, subtype="html")
    return mime


def _safe_filename(key: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", key)[:80].strip("._") or "message"
    return f"{readable}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


# -- outbox (files) -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredEmail:
    path: Path
    message_id: str
    to: str
    subject: str


class OutboxEmailBackend:
    """Writes one ``.eml`` per message into ``directory`` (atomic rename; same key → same file)."""

    name = "outbox"

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def send(self, message: OutgoingEmail) -> SendReceipt:
        mime = build_mime(message)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            stem = _safe_filename(message.idempotency_key)
            final = self.directory / f"{stem}.eml"
            tmp = self.directory / f".{stem}.{threading.get_ident()}.tmp"
            tmp.write_bytes(mime.as_bytes())
            tmp.replace(final)
        except OSError as exc:
            raise EmailTemporaryError("outbox directory is not writable", code="email_outbox_io") from exc
        return SendReceipt(provider_message_id=str(mime["Message-ID"]), backend=self.name)

    def list_messages(self) -> list[StoredEmail]:
        """Every stored message, oldest file first (for the ops page and tests)."""
        from email import message_from_bytes
        from email.policy import default as default_policy

        if not self.directory.is_dir():
            return []
        out: list[StoredEmail] = []
        for path in sorted(self.directory.glob("*.eml"), key=lambda p: (p.stat().st_mtime_ns, p.name)):
            parsed = message_from_bytes(path.read_bytes(), policy=default_policy)
            out.append(
                StoredEmail(
                    path=path,
                    message_id=str(parsed.get("Message-ID", "")),
                    to=str(parsed.get("To", "")),
                    subject=str(parsed.get("Subject", "")),
                )
            )
        return out


# -- console ------------------------------------------------------------------------------------------------


class ConsoleEmailBackend:
    """Prints each message (development only)."""

    name = "console"

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def send(self, message: OutgoingEmail) -> SendReceipt:
        mime = build_mime(message)
        stream = self._stream or sys.stdout
        with self._lock:
            stream.write("----- email -----\n")
            stream.write(mime.as_string())
            stream.write("\n----- end -----\n")
            stream.flush()
        return SendReceipt(provider_message_id=str(mime["Message-ID"]), backend=self.name)


# -- SMTP ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SmtpConfig:
    hostname: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    use_tls: bool = False  # implicit TLS (smtps://)
    start_tls: bool = False
    timeout_s: float = DEFAULT_SMTP_TIMEOUT_S
    cafile: str | None = None
    verify: bool = True

    @classmethod
    def from_url(cls, url: str) -> SmtpConfig:
        """Parse ``smtp://user:pass@host:port?starttls=true`` / ``smtps://…``; errors never echo the URL."""
        if not url:
            raise ConfigurationError("CURAWAY_SMTP_URL is not set (needed by CURAWAY_EMAIL_BACKEND=smtp)")
        parts = urlsplit(url)
        if parts.scheme not in {"smtp", "smtps"}:
            raise ConfigurationError("CURAWAY_SMTP_URL must start with smtp:// or smtps://")
        try:
            port = parts.port
        except ValueError as exc:
            raise ConfigurationError("CURAWAY_SMTP_URL has an invalid port") from exc
        if not parts.hostname:
            raise ConfigurationError("CURAWAY_SMTP_URL has no host")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        known = {"starttls", "timeout_s", "cafile", "verify"}
        unknown = sorted(set(query) - known)
        if unknown:
            raise ConfigurationError(f"CURAWAY_SMTP_URL has unknown options: {', '.join(unknown)}")

        def flag(name: str, default: bool) -> bool:
            raw = query.get(name)
            if raw is None:
                return default
            parsed = parse_bool(raw)
            if parsed is None:
                raise ConfigurationError(f"CURAWAY_SMTP_URL option {name} must be true or false")
            return parsed

        implicit = parts.scheme == "smtps"
        start_tls = flag("starttls", False)
        if implicit and start_tls:
            raise ConfigurationError("CURAWAY_SMTP_URL: smtps:// (implicit TLS) and starttls=true exclude each other")
        try:
            timeout_s = float(query.get("timeout_s", DEFAULT_SMTP_TIMEOUT_S))
        except ValueError as exc:
            raise ConfigurationError("CURAWAY_SMTP_URL option timeout_s must be a number") from exc
        if not 0 < timeout_s <= 300:
            raise ConfigurationError("CURAWAY_SMTP_URL option timeout_s must be within (0, 300]")
        return cls(
            hostname=parts.hostname,
            port=port or (465 if implicit else 587 if start_tls else 25),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            use_tls=implicit,
            start_tls=start_tls,
            timeout_s=timeout_s,
            cafile=query.get("cafile"),
            verify=flag("verify", True),
        )

    def tls_context(self) -> ssl.SSLContext | None:
        if not (self.use_tls or self.start_tls):
            return None
        context = ssl.create_default_context(cafile=self.cafile)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine from sync code, also when called from a thread that already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


class SmtpEmailBackend:
    """aiosmtplib client; one connection per send (volumes are small), bounded by ``timeout_s``."""

    name = "smtp"

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config

    @classmethod
    def from_url(cls, url: str) -> SmtpEmailBackend:
        return cls(SmtpConfig.from_url(url))

    def send(self, message: OutgoingEmail) -> SendReceipt:
        mime = build_mime(message)
        _run_sync(self._send(mime))
        return SendReceipt(provider_message_id=str(mime["Message-ID"]), backend=self.name)

    async def _send(self, mime: EmailMessage) -> None:
        import aiosmtplib

        cfg = self.config
        try:
            await aiosmtplib.send(
                mime,
                hostname=cfg.hostname,
                port=cfg.port,
                username=cfg.username,
                password=cfg.password,
                use_tls=cfg.use_tls,
                start_tls=cfg.start_tls,
                tls_context=cfg.tls_context(),
                timeout=cfg.timeout_s,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [getattr(r, "code", 550) for r in exc.recipients]
            raise _smtp_error(min(codes) if codes else 550, "recipient refused") from exc
        except aiosmtplib.SMTPResponseException as exc:
            raise _smtp_error(exc.code, "response") from exc
        except aiosmtplib.SMTPTimeoutError as exc:
            raise EmailTemporaryError("SMTP server timed out", code="smtp_timeout") from exc
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            raise EmailTemporaryError(f"SMTP connection failed ({type(exc).__name__})", code="smtp_connection") from exc


def _smtp_error(code: int, what: str) -> Exception:
    if 400 <= code < 500:
        return EmailTemporaryError(f"SMTP {what} {code} (temporary)", code=f"smtp_{code}")
    return EmailRejectedError(f"SMTP {what} {code} (permanent)", code=f"smtp_{code}")


# -- fake ---------------------------------------------------------------------------------------------------


class FakeEmailBackend:
    """In-memory backend for tests. Thread-safe.

    ``fail_after``: raise ``crash`` (default ``RuntimeError``, a process crash stand-in) instead of sending once
    ``fail_after`` messages were sent. ``fail_for``: recipient → exception raised when sending to it.
    """

    name = "fake"

    def __init__(
        self,
        *,
        fail_after: int | None = None,
        crash: type[BaseException] | BaseException = RuntimeError,
        fail_for: dict[str, BaseException] | None = None,
    ) -> None:
        self.sent: list[OutgoingEmail] = []
        self.fail_after = fail_after
        self.crash = crash
        self.fail_for = dict(fail_for or {})
        self.attempts = 0
        self._lock = threading.Lock()

    def send(self, message: OutgoingEmail) -> SendReceipt:
        build_mime(message)  # same validation as the real backends
        with self._lock:
            self.attempts += 1
            if message.to in self.fail_for:
                raise self.fail_for[message.to]
            if self.fail_after is not None and len(self.sent) >= self.fail_after:
                crash = self.crash
                raise crash("fake email backend crashed") if isinstance(crash, type) else crash
            self.sent.append(message)
            return SendReceipt(provider_message_id=message_id_for(message.idempotency_key), backend=self.name)

    def recipients(self) -> list[str]:
        with self._lock:
            return [m.to for m in self.sent]

    def keys(self) -> list[str]:
        with self._lock:
            return [m.idempotency_key for m in self.sent]


# -- factory ------------------------------------------------------------------------------------------------


def outbox_dir(settings: Settings) -> Path:
    return settings.data_dir / "outbox"


def build_email_backend(settings: Settings, *, stream: TextIO | None = None) -> EmailBackend:
    """The configured backend (``CURAWAY_EMAIL_BACKEND``); raises ``ConfigurationError`` on a bad SMTP URL."""
    if settings.email_backend == "smtp":
        return SmtpEmailBackend.from_url(settings.smtp_url)
    if settings.email_backend == "console":
        return ConsoleEmailBackend(stream)
    return OutboxEmailBackend(outbox_dir(settings))
