"""Beamtime tokens: round trip, every rejection with its message, PyJWT interop, secret files.

Test dependency: PyJWT (``pip install pyjwt``) for the interop tests; they skip without it.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import time

import pytest

from asapo_hpc.auth import (
    access_for_producer_type,
    issue_token,
    load_or_create_secret,
    token_access_types,
    verify_token,
)
from asapo_hpc.errors import AsapoAuthorizationError, AsapoWrongInputError

SECRET = b"test-secret-0123456789abcdef0123"
NOW = 1_800_000_000.0


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forge(header: object, payload: object, secret: bytes = SECRET) -> str:
    """A token with arbitrary header/payload, signed correctly (to isolate one check)."""
    import hashlib
    import hmac

    h = b64(json.dumps(header).encode())
    p = b64(json.dumps(payload).encode())
    sig = hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{b64(sig)}"


def rejected(token: str, match: str, **kwargs: object) -> None:
    args = {"beamtime": "bt1", "access": "read", "now": NOW}
    args.update(kwargs)
    with pytest.raises(AsapoAuthorizationError, match=match):
        verify_token(SECRET, token, **args)


GOOD_HEADER = {"alg": "HS256", "typ": "JWT"}


def good_claims(**extra: object) -> dict:
    claims = {"sub": "bt_bt1", "jti": "x", "ExtraClaims": {"AccessTypes": ["read"]}}
    claims.update(extra)
    return claims


# --- round trip -------------------------------------------------------------------------


def test_round_trip_returns_asapo_shaped_claims() -> None:
    token = issue_token(
        SECRET, beamtime="bt1", access_types=("read", "write"), expires_in=60, now=NOW
    )
    claims = verify_token(SECRET, token, beamtime="bt1", access="write", now=NOW + 59)
    assert claims["sub"] == "bt_bt1"
    assert claims["ExtraClaims"] == {"AccessTypes": ["read", "write"]}
    assert claims["exp"] == int(NOW + 60)
    assert isinstance(claims["jti"], str) and len(claims["jti"]) == 20


def test_each_token_has_its_own_id() -> None:
    a = issue_token(SECRET, beamtime="bt1", expires_in=None, now=NOW)
    b = issue_token(SECRET, beamtime="bt1", expires_in=None, now=NOW)
    ids = {verify_token(SECRET, t, beamtime="bt1", access="read")["jti"] for t in (a, b)}
    assert len(ids) == 2


def test_token_without_expiry_has_no_exp_and_stays_valid() -> None:
    token = issue_token(SECRET, beamtime="bt1", expires_in=None, now=NOW)
    claims = verify_token(SECRET, token, beamtime="bt1", access="read", now=NOW + 10 * 365 * 86400)
    assert "exp" not in claims


def test_beamline_token_is_checked_against_the_beamline() -> None:
    token = issue_token(SECRET, beamline="p07", access_types=["writeraw"], expires_in=None)
    claims = verify_token(SECRET, token, beamtime="11111111", beamline="p07", access="writeraw")
    assert claims["sub"] == "bl_p07"
    rejected(token, "beamline 'p07', not for beamline 'p08'", beamline="p08", access="writeraw")


def test_top_level_access_types_are_accepted() -> None:
    token = forge(GOOD_HEADER, {"sub": "bt_bt1", "AccessTypes": ["read"]})
    claims = verify_token(SECRET, token, beamtime="bt1", access="read")
    assert token_access_types(claims) == ["read"]


def test_bytes_token_is_accepted() -> None:
    token = issue_token(SECRET, beamtime="bt1", expires_in=None)
    assert verify_token(SECRET, token.encode(), beamtime="bt1", access="read")["sub"] == "bt_bt1"


# --- issuing rejects bad requests ---------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "exactly one of beamtime or beamline"),
        ({"beamtime": "a", "beamline": "b"}, "exactly one of beamtime or beamline"),
        ({"beamtime": ""}, "non-empty"),
        ({"beamtime": "a", "access_types": ["admin"]}, "subset"),
        ({"beamtime": "a", "access_types": []}, "subset"),
        ({"beamtime": "a", "expires_in": 0}, "expires_in"),
        ({"beamtime": "a", "expires_in": -5}, "expires_in"),
    ],
)
def test_issue_rejects_bad_input(kwargs: dict, match: str) -> None:
    kwargs.setdefault("expires_in", 60)
    with pytest.raises(AsapoWrongInputError, match=match):
        issue_token(SECRET, **kwargs)


def test_issue_rejects_empty_secret() -> None:
    with pytest.raises(AsapoWrongInputError, match="secret"):
        issue_token(b"", beamtime="a", expires_in=None)


def test_single_access_type_string_is_not_split_into_letters() -> None:
    token = issue_token(SECRET, beamtime="bt1", access_types="write", expires_in=None)
    claims = verify_token(SECRET, token, beamtime="bt1", access="write")
    assert token_access_types(claims) == ["write"]


# --- verification rejects bad tokens ------------------------------------------------------


@pytest.mark.parametrize(
    "token, match",
    [
        ("", "no token given"),
        ("abc", r"malformed token: expected header.payload.signature, got 1 part"),
        ("a.b", "got 2 part"),
        ("a.b.c.d", "got 4 part"),
        ("x" * 9000, "more than 8192"),
        ("ab+c.eyJ9.sig", "header is not unpadded base64url"),
        ("eyJhbGciOiJIUzI1NiJ9=.x.y", "header is not unpadded base64url"),
        ("a.b.c", "header is not unpadded base64url"),  # one char: impossible length
        (f"{b64(b'not json')}.x.y", "header is not JSON"),
        (f"{b64(b'[1, 2]')}.x.y", "header is not a JSON object"),
        (b64(bytes([0xFF, 0xFE])) + ".x.y", "header is not JSON"),
    ],
)
def test_malformed_tokens_are_rejected(token: str, match: str) -> None:
    rejected(token, match)


@pytest.mark.parametrize("alg", ["none", "None", "HS512", "RS256", None])
def test_other_algorithms_are_rejected(alg: object) -> None:
    header = {"typ": "JWT"} if alg is None else {"alg": alg, "typ": "JWT"}
    token = forge(header, good_claims())
    rejected(token, "algorithm .* is not accepted, only HS256")


def test_unsigned_none_token_is_rejected() -> None:
    h = b64(json.dumps({"alg": "none"}).encode())
    p = b64(json.dumps(good_claims()).encode())
    rejected(f"{h}.{p}.", "algorithm 'none' is not accepted")


def test_critical_header_is_rejected() -> None:
    rejected(forge({**GOOD_HEADER, "crit": ["x"]}, good_claims()), "critical header")


def test_wrong_secret_is_a_bad_signature() -> None:
    token = issue_token(b"another secret", beamtime="bt1", expires_in=None)
    rejected(token, "bad signature")


def test_altered_payload_is_a_bad_signature() -> None:
    token = issue_token(SECRET, beamtime="bt1", access_types=["read"], expires_in=None)
    header, _, signature = token.split(".")
    forged_payload = b64(json.dumps(good_claims(ExtraClaims={"AccessTypes": ["write"]})).encode())
    rejected(f"{header}.{forged_payload}.{signature}", "bad signature", access="write")


def test_truncated_signature_is_a_bad_signature() -> None:
    token = issue_token(SECRET, beamtime="bt1", expires_in=None)
    rejected(token[:-4], "bad signature")


def test_bad_signature_base64_is_rejected() -> None:
    token = issue_token(SECRET, beamtime="bt1", expires_in=None)
    rejected(token[:-2] + "!!", "signature is not unpadded base64url")


def test_payload_that_is_not_json_is_rejected_after_a_good_signature() -> None:
    import hashlib
    import hmac

    h = b64(json.dumps(GOOD_HEADER).encode())
    p = b64(b"{not json")
    sig = b64(hmac.new(SECRET, f"{h}.{p}".encode(), hashlib.sha256).digest())
    rejected(f"{h}.{p}.{sig}", "payload is not JSON")


def test_expired_token_is_rejected() -> None:
    token = issue_token(SECRET, beamtime="bt1", expires_in=60, now=NOW)
    rejected(token, "token expired 0 s ago", now=NOW + 60)
    rejected(token, "token expired 3600 s ago", now=NOW + 3660)


def test_not_yet_valid_token_is_rejected() -> None:
    rejected(forge(GOOD_HEADER, good_claims(nbf=NOW + 100)), "not valid yet")


@pytest.mark.parametrize("claim", ["exp", "nbf"])
def test_non_numeric_time_claim_is_rejected(claim: str) -> None:
    rejected(forge(GOOD_HEADER, good_claims(**{claim: "tomorrow"})), f"'{claim}' is not a number")


def test_wrong_beamtime_is_rejected() -> None:
    token = issue_token(SECRET, beamtime="bt1", expires_in=None)
    rejected(token, "token is for beamtime 'bt1', not for beamtime 'bt2'", beamtime="bt2")


def test_beamtime_token_does_not_open_a_beamline() -> None:
    token = issue_token(SECRET, beamtime="bt1", expires_in=None)
    rejected(token, "not for beamtime None", beamtime=None, beamline="p07")


def test_beamline_token_without_a_beamline_is_rejected() -> None:
    token = issue_token(SECRET, beamline="p07", expires_in=None)
    rejected(token, "token is for beamline 'p07', not for beamline None")


@pytest.mark.parametrize("subject", [None, 42, "user_bt1", "bt1"])
def test_bad_subject_is_rejected(subject: object) -> None:
    claims = good_claims(sub=subject) if subject is not None else {"AccessTypes": ["read"]}
    rejected(forge(GOOD_HEADER, claims), "no 'sub' claim|neither bt_<beamtime> nor bl_<beamline>")


@pytest.mark.parametrize(
    "granted, needed",
    [
        (["read"], "write"),
        (["write"], "read"),
        (["writeraw"], "write"),  # ASAPO: writeraw is for raw sources only
        (["write"], "writeraw"),
        (["read", "writeraw"], "write"),
    ],
)
def test_missing_access_type_is_rejected(granted: list[str], needed: str) -> None:
    token = issue_token(SECRET, beamtime="bt1", access_types=granted, expires_in=None)
    rejected(token, f"token grants .* but this request needs '{needed}'", access=needed)


@pytest.mark.parametrize("extra", [{}, {"ExtraClaims": None}, {"AccessTypes": "read"}])
def test_missing_access_types_claim_is_rejected(extra: dict) -> None:
    claims = {"sub": "bt_bt1", **extra}
    rejected(forge(GOOD_HEADER, claims), "no list of access types")


def test_unknown_requested_access_is_a_caller_error() -> None:
    token = issue_token(SECRET, beamtime="bt1", expires_in=None)
    with pytest.raises(AsapoWrongInputError, match="access must be one of"):
        verify_token(SECRET, token, beamtime="bt1", access="admin")


def test_authorization_error_is_a_permission_error() -> None:
    with pytest.raises(PermissionError):
        verify_token(SECRET, "a.b", beamtime="bt1", access="read")


# --- interop with PyJWT -------------------------------------------------------------------


def test_our_tokens_verify_with_pyjwt() -> None:
    jwt = pytest.importorskip("jwt")
    token = issue_token(SECRET, beamtime="bt1", access_types=["read", "write"], expires_in=600)
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "bt_bt1"
    assert claims["ExtraClaims"]["AccessTypes"] == ["read", "write"]
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}


def test_pyjwt_rejects_our_token_with_another_secret() -> None:
    jwt = pytest.importorskip("jwt")
    token = issue_token(SECRET, beamtime="bt1", expires_in=600)
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, b"another secret 0123456789abcdefgh", algorithms=["HS256"])


def test_pyjwt_agrees_our_expired_token_is_expired() -> None:
    jwt = pytest.importorskip("jwt")
    token = issue_token(SECRET, beamtime="bt1", expires_in=60, now=time.time() - 3600)
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(token, SECRET, algorithms=["HS256"])


@pytest.mark.parametrize(
    "payload_access",
    [
        {"ExtraClaims": {"AccessTypes": ["write"]}},  # ASAPO's layout
        {"AccessTypes": ["write"]},  # private claim at top level
    ],
)
def test_pyjwt_tokens_verify_with_ours(payload_access: dict) -> None:
    jwt = pytest.importorskip("jwt")
    payload = {"sub": "bt_bt1", "jti": "abc", "exp": int(NOW) + 60, **payload_access}
    token = jwt.encode(payload, SECRET, algorithm="HS256")
    claims = verify_token(SECRET, token, beamtime="bt1", access="write", now=NOW)
    assert claims["jti"] == "abc"


def test_pyjwt_expired_token_is_rejected_by_ours() -> None:
    jwt = pytest.importorskip("jwt")
    token = jwt.encode(good_claims(exp=int(NOW) - 1), SECRET, algorithm="HS256")
    rejected(token, "token expired")


def test_pyjwt_hs512_token_is_rejected_by_ours() -> None:
    jwt = pytest.importorskip("jwt")
    token = jwt.encode(good_claims(), SECRET * 2, algorithm="HS512")
    rejected(token, "'HS512' is not accepted")


# --- secret files -------------------------------------------------------------------------


def test_secret_file_is_created_0600_and_reused(tmp_path) -> None:
    path = tmp_path / "auth_secret.key"
    first = load_or_create_secret(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) >= 32
    assert load_or_create_secret(path) == first
    assert [p.name for p in tmp_path.iterdir()] == ["auth_secret.key"]  # no temp file left


def test_secret_file_is_0600_even_with_a_permissive_umask(tmp_path) -> None:
    old = os.umask(0)
    try:
        load_or_create_secret(tmp_path / "key")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "key").stat().st_mode) == 0o600


def test_existing_secret_file_is_read_not_replaced(tmp_path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"my-secret\n")
    path.chmod(0o600)
    assert load_or_create_secret(path) == b"my-secret"


def test_group_readable_secret_file_is_allowed(tmp_path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"shared-with-group")
    path.chmod(0o640)
    assert load_or_create_secret(path) == b"shared-with-group"


def test_world_readable_secret_file_is_refused(tmp_path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"leaked")
    path.chmod(0o644)
    with pytest.raises(AsapoAuthorizationError, match=r"accessible by others \(mode 0644\)"):
        load_or_create_secret(path)


def test_empty_secret_file_is_refused(tmp_path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"\n")
    path.chmod(0o600)
    with pytest.raises(AsapoAuthorizationError, match="is empty"):
        load_or_create_secret(path)


def test_secret_from_file_issues_verifiable_tokens(tmp_path) -> None:
    secret = load_or_create_secret(tmp_path / "key")
    token = issue_token(secret, beamtime="bt1", expires_in=None)
    assert verify_token(secret, token, beamtime="bt1", access="read")["sub"] == "bt_bt1"


@pytest.mark.parametrize("producer_type, access", [("processed", "write"), ("raw", "writeraw")])
def test_producer_type_names_the_write_access_it_needs(producer_type: str, access: str) -> None:
    assert access_for_producer_type(producer_type) == access


@pytest.mark.parametrize("producer_type", ["Raw", "", None, 1, ["raw"]])
def test_unknown_producer_type_is_wrong_input(producer_type: object) -> None:
    with pytest.raises(AsapoWrongInputError, match="producer type .* is not one of "
                                                   r"\['processed', 'raw'\]"):
        access_for_producer_type(producer_type)
