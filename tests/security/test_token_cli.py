"""Dev keys and ``phiserve token init|issue``: files, permissions, and tokens that verify."""

from __future__ import annotations

import argparse
import importlib.util
import json
import stat
import time
from pathlib import Path

import jwt
import pytest

from phiserve.cli import token as token_cli
from phiserve.config import Settings
from phiserve.errors import BadRequest, ConfigurationError
from phiserve.security import errors as sec
from phiserve.security.devkeys import MAX_TTL_S, ensure_dev_keys, issue_token, public_jwk
from phiserve.security.tokens import TokenVerifier


@pytest.fixture
def dev_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PHISERVE_HOME in a temporary folder, as the CLI reads settings from the environment."""
    home = tmp_path / "home"
    monkeypatch.setenv("PHISERVE_HOME", str(home))
    for name in ("PHISERVE_JWKS_URL", "PHISERVE_JWKS_FILE", "PHISERVE_DEV_SIGNING_KEY"):
        monkeypatch.delenv(name, raising=False)
    return home


def run_token_cli(argv: list[str]) -> int:
    """``phiserve token ...`` through this module's own ``register`` (see test_full_cli_main)."""
    parser = argparse.ArgumentParser(prog="phiserve")
    token_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def _full_cli_available() -> bool:
    names = ("serve", "dev", "models", "keys", "audit")
    return all(importlib.util.find_spec(f"phiserve.cli.{n}") for n in names)


# --- dev keys ----------------------------------------------------------------------------------
def test_ensure_dev_keys_creates_private_key_0600_and_jwks(dev_home: Path) -> None:
    settings = Settings()
    ensure_dev_keys(settings)
    key_file = settings.signing_key_file
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    jwks = json.loads(settings.jwks_path.read_text())
    (jwk,) = jwks["keys"]
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("EC", "P-256", "ES256", "sig")
    assert "d" not in jwk  # public half only


def test_ensure_dev_keys_is_idempotent(dev_home: Path) -> None:
    settings = Settings()
    ensure_dev_keys(settings)
    key_before = settings.signing_key_file.read_bytes()
    jwks_before = settings.jwks_path.read_text()
    ensure_dev_keys(settings)
    assert settings.signing_key_file.read_bytes() == key_before
    assert settings.jwks_path.read_text() == jwks_before


def test_ensure_dev_keys_keeps_other_keys_in_the_jwks(dev_home: Path, rsa_key) -> None:
    settings = Settings()
    settings.jwks_path.parent.mkdir(parents=True, mode=0o700)
    settings.jwks_path.write_text(json.dumps({"keys": [public_jwk(rsa_key)]}))
    ensure_dev_keys(settings)
    kids = [k["kid"] for k in json.loads(settings.jwks_path.read_text())["keys"]]
    assert kids[0] == public_jwk(rsa_key)["kid"]
    assert len(kids) == 2


def test_rsa_dev_key_when_only_rs256_is_allowed(dev_home: Path) -> None:
    settings = Settings(jwt_algorithms=["RS256"])
    ensure_dev_keys(settings)
    (jwk,) = json.loads(settings.jwks_path.read_text())["keys"]
    assert (jwk["kty"], jwk["alg"]) == ("RSA", "RS256")
    token = issue_token(settings, "alice", ["infer:*"])
    assert TokenVerifier.from_settings(settings).verify(token).scopes == {"infer:*"}


def test_world_readable_signing_key_is_refused(dev_home: Path) -> None:
    settings = Settings()
    ensure_dev_keys(settings)
    settings.signing_key_file.chmod(0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        issue_token(settings, "alice", ["infer:*"])


def test_issue_without_init_says_what_to_run(dev_home: Path) -> None:
    with pytest.raises(ConfigurationError, match="phiserve token init"):
        issue_token(Settings(), "alice", ["infer:*"])


@pytest.mark.parametrize("ttl", [0, -5, MAX_TTL_S + 1, 10**9])
def test_ttl_is_bounded(dev_home: Path, ttl: int) -> None:
    settings = Settings()
    ensure_dev_keys(settings)
    with pytest.raises(BadRequest, match="ttl"):
        issue_token(settings, "alice", ["infer:*"], ttl_s=ttl)


@pytest.mark.parametrize(
    ("subject", "scopes"), [("", ["infer:*"]), ("a\nb", ["infer:*"]), ("ok", ['bad"scope'])]
)
def test_bad_subject_or_scope_is_refused(dev_home: Path, subject: str, scopes: list[str]) -> None:
    settings = Settings()
    ensure_dev_keys(settings)
    with pytest.raises(BadRequest):
        issue_token(settings, subject, scopes)


def test_issued_claims(dev_home: Path) -> None:
    settings = Settings()
    ensure_dev_keys(settings)
    now = time.time()
    token = issue_token(settings, "alice", ["infer:b metadata:read", "infer:a"], ttl_s=600)
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert header["alg"] == "ES256"
    assert header["kid"] == json.loads(settings.jwks_path.read_text())["keys"][0]["kid"]
    assert claims["iss"] == settings.oidc_issuer
    assert claims["aud"] == settings.oidc_audience
    assert claims["sub"] == "alice"
    assert claims["scope"] == "infer:a infer:b metadata:read"
    assert claims["exp"] - claims["iat"] == 600
    assert claims["nbf"] == claims["iat"]
    assert abs(claims["iat"] - now) < 5
    assert len(claims["jti"]) >= 16
    other = issue_token(settings, "alice", ["infer:a"])
    assert jwt.decode(other, options={"verify_signature": False})["jti"] != claims["jti"]


# --- the CLI -----------------------------------------------------------------------------------
def test_cli_init_then_issue_verifies(dev_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_token_cli(["token", "init"]) == 0
    assert run_token_cli(["token", "init"]) == 0  # idempotent
    capsys.readouterr()
    argv = ["token", "issue", "--subject", "alice", "--scope", "infer:breast-cancer metadata:read"]
    assert run_token_cli([*argv, "--ttl", "120"]) == 0
    out = capsys.readouterr().out
    token = out.strip()
    assert out.count("\n") == 1  # only the token: TOKEN=$(phiserve token issue ...) works
    principal = TokenVerifier.from_settings(Settings()).verify(token)
    assert principal.subject == "alice"
    assert principal.scopes == {"infer:breast-cancer", "metadata:read"}


def test_cli_repeated_scope_flags(dev_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_token_cli(["token", "init"])
    capsys.readouterr()
    run_token_cli(["token", "issue", "--subject", "s", "--scope", "infer:a", "--scope", "infer:b"])
    token = capsys.readouterr().out.strip()
    assert TokenVerifier.from_settings(Settings()).verify(token).scopes == {"infer:a", "infer:b"}


def test_cli_refuses_long_ttl(dev_home: Path) -> None:
    run_token_cli(["token", "init"])
    with pytest.raises(BadRequest):
        run_token_cli(["token", "issue", "--subject", "s", "--scope", "x", "--ttl", "90000"])


def test_expired_dev_token_is_refused(dev_home: Path) -> None:
    settings = Settings()
    ensure_dev_keys(settings)
    token = issue_token(settings, "alice", ["infer:*"], ttl_s=60, now=time.time() - 3600)
    with pytest.raises(sec.TokenExpired):
        TokenVerifier.from_settings(settings).verify(token)


@pytest.mark.skipif(not _full_cli_available(), reason="other CLI modules not written yet")
def test_full_cli_main(dev_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from phiserve.cli import main

    assert main(["token", "init"]) == 0
    capsys.readouterr()
    assert main(["token", "issue", "--subject", "alice", "--scope", "infer:*"]) == 0
    token = capsys.readouterr().out.strip()
    assert TokenVerifier.from_settings(Settings()).verify(token).subject == "alice"
    assert main(["token", "issue", "--subject", "alice", "--ttl", "999999"]) == 2
    assert "ttl" in capsys.readouterr().err
