"""Email templates: each renders a subject, a plain-text part and an HTML part from plain data.

Values are escaped for the HTML part; the plain-text part is used as is. Templates are code (not files) so a
typo in a field name fails in the unit tests, not at 3 am: :func:`render` raises ``ValidationFailed`` naming the
template and the missing field (never the value).
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from curaway.errors import ValidationFailed


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str


def _need(template: str, context: Mapping[str, Any], *names: str) -> list[Any]:
    missing = [n for n in names if n not in context]
    if missing:
        raise ValidationFailed(f"template {template} needs {', '.join(missing)}", code="template_context")
    return [context[n] for n in names]


def _greeting(name: Any) -> str:
    clean = " ".join(str(name).split()) if name else ""
    return f"Hello {clean}," if clean else "Hello,"


def _page(title: str, paragraphs: Sequence[str], *, items: Sequence[str] = ()) -> str:
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    if items:
        body += "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"
    return (
        '<!doctype html><html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head>"
        f'<body style="font-family:sans-serif">{body}'
        '<p style="color:#666;font-size:12px">Curaway · you receive this because you have an open case.</p>'
        "</body></html>"
    )


def intake_reminder(context: Mapping[str, Any]) -> RenderedEmail:
    name, link, number = _need("intake_reminder", context, "patient_name", "case_link", "reminder_number")
    subject = "Your Curaway intake is waiting for you"
    greeting = _greeting(name)
    lines = [
        greeting,
        "",
        "We have not heard from you for a while. Your care coordinator needs a few more details to continue "
        "with your case.",
        f"Continue your intake here: {link}",
        "",
        f"(Reminder {number} of 3 — reply to your coordinator at any time to stop these reminders.)",
    ]
    page = _page(
        subject,
        [
            html.escape(greeting),
            "We have not heard from you for a while. Your care coordinator needs a few more details to continue "
            "with your case.",
            f'<a href="{html.escape(str(link), quote=True)}">Continue your intake</a>',
            f"Reminder {html.escape(str(number))} of 3.",
        ],
    )
    return RenderedEmail(subject=subject, text="\n".join(lines) + "\n", html=page)


def consent_expiry(context: Mapping[str, Any]) -> RenderedEmail:
    name, kind, expires_on, days_left = _need(
        "consent_expiry", context, "patient_name", "consent_kind", "expires_on", "days_left"
    )
    readable_kind = str(kind).replace("_", " ")
    subject = f"Your {readable_kind} consent expires on {expires_on}"
    greeting = _greeting(name)
    text = (
        f"{greeting}\n\n"
        f"Your {readable_kind} consent expires on {expires_on} (in {days_left} days). "
        "Please renew it so that your care team can keep working on your case.\n"
    )
    page = _page(
        subject,
        [
            html.escape(greeting),
            f"Your {html.escape(readable_kind)} consent expires on <strong>{html.escape(str(expires_on))}</strong> "
            f"(in {html.escape(str(days_left))} days).",
            "Please renew it so that your care team can keep working on your case.",
        ],
    )
    return RenderedEmail(subject=subject, text=text, html=page)


def notification_digest(context: Mapping[str, Any]) -> RenderedEmail:
    name, day, items = _need("notification_digest", context, "display_name", "day", "items")
    entries = [str(i.get("title", "")) if isinstance(i, Mapping) else str(i) for i in items]
    if not entries:
        raise ValidationFailed("template notification_digest needs at least one item", code="template_context")
    count = len(entries)
    subject = f"Your Curaway digest for {day}: {count} unread notification{'s' if count != 1 else ''}"
    greeting = _greeting(name)
    text = f"{greeting}\n\nYou have {count} unread notification{'s' if count != 1 else ''}:\n"
    text += "".join(f"- {e}\n" for e in entries)
    page = _page(
        subject,
        [html.escape(greeting), f"You have {count} unread notification{'s' if count != 1 else ''}:"],
        items=[html.escape(e) for e in entries],
    )
    return RenderedEmail(subject=subject, text=text, html=page)


TEMPLATES: dict[str, Callable[[Mapping[str, Any]], RenderedEmail]] = {
    "intake_reminder": intake_reminder,
    "consent_expiry": consent_expiry,
    "notification_digest": notification_digest,
}


def render(template: str, context: Mapping[str, Any]) -> RenderedEmail:
    renderer = TEMPLATES.get(template)
    if renderer is None:
        raise ValidationFailed(f"unknown email template {template}", code="template_unknown")
    return renderer(context)
