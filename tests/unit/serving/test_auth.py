"""The exposure rule and the settings that go with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.settings import ServingSettings, Settings
from serving.auth import check_exposure, is_loopback
from serving.errors import ServingConfigError


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.1.2.3", False),
        ("convert.internal", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_refuses_to_listen_beyond_loopback_without_token_or_mutual_tls(tmp_path: Path) -> None:
    check_exposure(ServingSettings(host="127.0.0.1"))
    with pytest.raises(ServingConfigError, match="S2A_SERVING__TOKEN"):
        check_exposure(ServingSettings(host="0.0.0.0"))
    check_exposure(ServingSettings(host="0.0.0.0", token="s3cret"))  # type: ignore[arg-type]
    pem = tmp_path / "x.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    # TLS alone encrypts but does not say who the client is: still refused.
    with pytest.raises(ServingConfigError, match="without authentication"):
        check_exposure(ServingSettings(host="0.0.0.0", tls_cert=pem, tls_key=pem))
    check_exposure(ServingSettings(host="0.0.0.0", tls_cert=pem, tls_key=pem, tls_client_ca=pem))
    with pytest.raises(ServingConfigError, match="tls_client_ca"):
        check_exposure(
            ServingSettings(
                host="0.0.0.0", tls_cert=pem, tls_key=pem, tls_client_ca=tmp_path / "no"
            )
        )


def test_tls_settings_come_in_pairs(tmp_path: Path) -> None:
    # A ConfigError inside the settings validator reaches the caller as pydantic's
    # ValidationError (both are ValueErrors), with the message kept.
    with pytest.raises(ValueError, match=r"tls_cert and serving\.tls_key"):
        Settings(home=tmp_path, serving={"tls_cert": tmp_path / "c.pem"})
    with pytest.raises(ValueError, match="mutual TLS"):
        Settings(home=tmp_path, serving={"tls_client_ca": tmp_path / "ca.pem"})
    settings = Settings(home=tmp_path)
    assert settings.serving_model_name == settings.train.model_name
    assert settings.serving.message_limit(settings.limits) > settings.serving.image_limit(
        settings.limits
    )
