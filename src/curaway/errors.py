"""One root exception with retryable and permanent branches (DESIGN §7).

Third-party errors are translated at the boundary with ``raise ... from``; the runtime maps the two branches onto
the retry protocol of DESIGN §2 (retryable → 5xx/409 + Retry-After, permanent → dead letter).
Messages must never carry PHI or secrets: use ids and error codes.
"""

from __future__ import annotations


class CurawayError(Exception):
    """Root of every error the product raises on purpose."""

    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.code


class ConfigurationError(CurawayError):
    """Settings are missing, invalid or unsafe for the environment."""

    code = "configuration"


class RetryableError(CurawayError):
    """A transient failure: the same work may succeed later (dependency 5xx, timeout, lock busy)."""

    code = "retryable"

    def __init__(self, message: str, *, code: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


class PermanentError(CurawayError):
    """Retrying cannot help (bad payload, unknown document, validation): dead-letter at once."""

    code = "permanent"


class NotFoundError(PermanentError):
    code = "not_found"


class ValidationFailed(PermanentError):
    code = "validation"


class AuthenticationError(CurawayError):
    """A caller could not be verified; ``code`` is the reason logged (never the credential)."""

    code = "unauthenticated"
