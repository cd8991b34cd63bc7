"""Email backends through one contract: outbox files, SMTP (a real aiosmtpd sink), console and the fake."""

from __future__ import annotations

import io
import socket
import threading
from email import message_from_bytes
from email.policy import default as default_policy

import pytest

from curaway.errors import ConfigurationError
from curaway.integrations.email import (
    ConsoleEmailBackend,
    EmailRejectedError,
    EmailTemporaryError,
    FakeEmailBackend,
    OutboxEmailBackend,
    OutgoingEmail,
    SmtpEmailBackend,
    build_email_backend,
    message_id_for,
)
from tests.support.crons_smtp import free_port, smtp_sink

MESSAGE = OutgoingEmail(
    idempotency_key="intake-reminder:case_x:1:1",
    to="patient@patients.example",
    subject="Your Curaway intake is waiting for you",
    text="Hello,\nplain part\n",
    html="<p>Hello, <b>html</b> part</p>",
    from_addr="Curaway <no-reply@curaway.example>",
)


@pytest.fixture(params=["outbox", "smtp", "console", "fake"])
def backend_and_inbox(request, tmp_path):
    """(backend, read) where read() returns the delivered messages as parsed MIME."""
    if request.param == "outbox":
        backend = OutboxEmailBackend(tmp_path / "outbox")
        yield (
            backend,
            lambda: [message_from_bytes(s.path.read_bytes(), policy=default_policy) for s in backend.list_messages()],
        )
    elif request.param == "smtp":
        with smtp_sink() as sink:
            yield SmtpEmailBackend.from_url(sink.url(timeout_s=5)), lambda: [r.message for r in sink.received]
    elif request.param == "console":
        stream = io.StringIO()

        def read_console():
            chunks = [c for c in stream.getvalue().split("----- email -----\n") if c]
            return [message_from_bytes(c.split("\n----- end -----")[0].encode(), policy=default_policy) for c in chunks]

        yield ConsoleEmailBackend(stream), read_console
    else:
        fake = FakeEmailBackend()
        yield fake, lambda: [_fake_mime(m) for m in fake.sent]


def _fake_mime(message):
    from curaway.integrations.email import build_mime

    return message_from_bytes(build_mime(message).as_bytes(), policy=default_policy)


def test_contract_delivers_text_and_html_parts(backend_and_inbox):
    backend, read = backend_and_inbox
    receipt = backend.send(MESSAGE)
    assert receipt.provider_message_id == message_id_for(MESSAGE.idempotency_key)
    (got,) = read()
    assert got["To"] == MESSAGE.to and got["Subject"] == MESSAGE.subject
    assert got["Message-ID"] == message_id_for(MESSAGE.idempotency_key)
    assert got.get_body(("plain",)).get_content().replace("\r\n", "\n") == MESSAGE.text
    assert "<b>html</b>" in got.get_body(("html",)).get_content()


def test_contract_rejects_a_malformed_address_before_sending(backend_and_inbox):
    backend, read = backend_and_inbox
    bad = OutgoingEmail(idempotency_key="k", to="not-an-address\nBcc: x@y.z", subject="s", text="t")
    with pytest.raises(EmailRejectedError) as err:
        backend.send(bad)
    assert "not-an-address" not in err.value.message
    assert read() == []


def test_outbox_same_key_overwrites_instead_of_duplicating(tmp_path):
    backend = OutboxEmailBackend(tmp_path / "outbox")
    backend.send(MESSAGE)
    backend.send(MESSAGE)
    other = OutgoingEmail(idempotency_key="other", to="b@patients.example", subject="s", text="t")
    backend.send(other)
    assert len(backend.list_messages()) == 2


def test_build_email_backend_follows_settings(make_settings, tmp_path):
    assert isinstance(build_email_backend(make_settings()), OutboxEmailBackend)
    assert build_email_backend(make_settings()).directory == make_settings().data_dir / "outbox"
    assert isinstance(build_email_backend(make_settings(email_backend="console")), ConsoleEmailBackend)
    smtp = build_email_backend(make_settings(email_backend="smtp", smtp_url="smtps://u:p%40ss@mail.example"))
    assert isinstance(smtp, SmtpEmailBackend)
    assert smtp.config.use_tls and smtp.config.port == 465 and smtp.config.password == "p@ss"
    with pytest.raises(ConfigurationError):
        build_email_backend(make_settings(email_backend="smtp", smtp_url=""))


@pytest.mark.parametrize(
    ("reply", "error", "code"),
    [
        ("451 4.3.0 mailbox busy, try later", EmailTemporaryError, "smtp_451"),
        ("421 4.7.0 closing", EmailTemporaryError, "smtp_421"),
        ("550 5.1.1 no such user", EmailRejectedError, "smtp_550"),
        ("554 5.7.1 rejected", EmailRejectedError, "smtp_554"),
    ],
)
def test_smtp_replies_map_to_temporary_or_permanent(reply, error, code):
    with smtp_sink() as sink:
        sink.handler.reply_for[MESSAGE.to] = reply
        with pytest.raises(error) as err:
            SmtpEmailBackend.from_url(sink.url(timeout_s=5)).send(MESSAGE)
        assert err.value.code == code
        assert MESSAGE.to not in err.value.message
        assert sink.received == []


def test_smtp_connection_refused_is_temporary():
    port = free_port()
    with pytest.raises(EmailTemporaryError) as err:
        SmtpEmailBackend.from_url(f"smtp://127.0.0.1:{port}?timeout_s=2").send(MESSAGE)
    assert err.value.code == "smtp_connection"


def test_smtp_timeout_is_temporary():
    """A server that accepts the connection but never greets."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    accepted = []
    stop = threading.Event()

    def accept():
        conn, _ = listener.accept()
        accepted.append(conn)
        stop.wait(5)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        port = listener.getsockname()[1]
        with pytest.raises(EmailTemporaryError) as err:
            SmtpEmailBackend.from_url(f"smtp://127.0.0.1:{port}?timeout_s=0.3").send(MESSAGE)
        assert err.value.code in {"smtp_timeout", "smtp_connection"}
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()
        listener.close()


def test_smtp_starttls_with_a_pinned_ca(tmp_path):
    with smtp_sink(tls_dir=tmp_path) as sink:
        SmtpEmailBackend.from_url(sink.url(starttls=True, timeout_s=5)).send(MESSAGE)
        assert len(sink.received) == 1
        # Without trusting the self-signed CA the TLS handshake fails: temporary, nothing delivered twice.
        with pytest.raises(EmailTemporaryError):
            SmtpEmailBackend.from_url(f"smtp://127.0.0.1:{sink.port}?starttls=true&timeout_s=5").send(MESSAGE)
        assert len(sink.received) == 1


@pytest.mark.parametrize(
    "url",
    [
        "http://mail.example",
        "smtp://",
        "smtp://host:99999",
        "smtps://host?starttls=true",
        "smtp://host?starttls=maybe",
        "smtp://host?timeout_s=0",
        "smtp://host?unknown=1",
    ],
)
def test_bad_smtp_urls_are_configuration_errors(url):
    with pytest.raises(ConfigurationError) as err:
        SmtpEmailBackend.from_url(url)
    assert "CURAWAY_SMTP_URL" in err.value.message
