"""Settings of the review web page (``review``): listen address, TLS, reviewer
sessions, and the session secret with its owner-only key file.
"""

from __future__ import annotations

import base64
from pathlib import Path

from pydantic import Field, SecretStr, model_validator

from schemas.errors import ConfigError
from schemas.settings.base import Group
from schemas.settings.keyfiles import create_key_file


class ReviewSettings(Group):
    """The review web page (``s2a review``): reviewers log in with accounts made by
    ``s2a reviewers add``; sessions are signed cookies.

    Security: on any address other than loopback the page refuses to start without TLS
    (``tls_cert`` + ``tls_key``). The session secret comes from ``session_secret`` or else
    from ``home/review-session.key``, made with the first reviewer account and never
    silently replaced (:meth:`resolve_session_secret`).
    """

    host: str = Field("127.0.0.1", description="listen address")
    port: int = Field(8470, ge=0, le=65535, description="listen port; 0 = any free port")
    session_secret: SecretStr | None = Field(
        None,
        description="key that signs session cookies (at least 32 characters); unset = "
        "generated with the first reviewer account and kept in home/review-session.key",
    )
    session_hours: float = Field(
        12.0, gt=0, le=24 * 30, description="a login lasts this long, then the page asks again"
    )
    tls_cert: Path | None = Field(None, description="server certificate chain (PEM)")
    tls_key: Path | None = Field(None, description="server private key (PEM)")

    @model_validator(mode="after")
    def _check_tls(self) -> ReviewSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError(
                "review.tls_cert and review.tls_key go together (S2A_REVIEW__TLS_CERT, "
                "S2A_REVIEW__TLS_KEY): set both, or neither"
            )
        return self

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None

    @staticmethod
    def session_key_path(home: Path) -> Path:
        """Where the generated session secret lives."""
        return home / "review-session.key"

    def resolve_session_secret(self, home: Path, *, create: bool) -> bytes:
        """The key that signs session cookies: from settings, else from
        ``home/review-session.key``.

        The file is made only with ``create`` (the caller knows that no secret can have
        existed: no reviewer account yet, or an explicit new secret), owner-only, by an
        atomic link so racing processes share one. Without ``create`` a missing file is a
        lost secret and a :class:`ConfigError` that says how to restore or replace it; a
        file others may read is refused too.
        """
        if self.session_secret is not None:
            raw = self.session_secret.get_secret_value()
            if len(raw) < 32:
                raise ConfigError("S2A_REVIEW__SESSION_SECRET must hold at least 32 characters")
            return raw.encode()
        path = self.session_key_path(home)
        if not path.exists():
            if not create:
                raise ConfigError(
                    f"the review session secret {path} is missing, but reviewer accounts "
                    "exist, so it was made before and is lost; restore it, or set "
                    "S2A_REVIEW__SESSION_SECRET, or make a new one with `s2a reviewers "
                    "new-secret` (every reviewer is signed out)"
                )
            create_key_file(path)
        if path.stat().st_mode & 0o077:
            raise ConfigError(
                f"the review session secret {path} may be read by other users; "
                f"`chmod 600 {path}`, or set S2A_REVIEW__SESSION_SECRET"
            )
        return base64.b64decode(path.read_text().strip())
