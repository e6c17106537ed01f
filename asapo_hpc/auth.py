"""Beamtime tokens: ASAPO's HS256 JSON Web Tokens, with the standard library only.

A token is ``base64url(header) . base64url(claims) . base64url(HMAC-SHA256(secret, h.c))``
(RFC 7519 / RFC 7515 compact form, no padding). Its claims, as ASAPO's authorizer writes them
(Go ``jwt-go`` ``StandardClaims`` plus a field ``ExtraClaims`` with no JSON tag)::

    {"exp": 1767225600, "iat": 1767139200, "jti": "<20 hex chars>", "sub": "bt_11012345",
     "ExtraClaims": {"AccessTypes": ["read", "write"]}}

- ``sub`` is ``bt_<beamtime>`` (one beamtime) or ``bl_<beamline>`` (the beamline's beamtimes).
- ``AccessTypes`` is a subset of read / write / writeraw. We write it under ``ExtraClaims`` as
  ASAPO does and also accept it at the top level (where other tools put private claims).
- ``exp`` is optional: ASAPO issues tokens without expiry when no validity is given.

Access semantics follow ASAPO's receiver and authorizer: the three types are independent.
``write`` lets a producer write a *processed* data source, ``writeraw`` a *raw* one; a token
with only ``writeraw`` may not write processed data and vice versa (ASAPO's receiver looks for
the exact string, and its authorizer passes ``["read", "writeraw"]`` through unchanged).
Neither write type implies ``read``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from asapo_hpc.errors import AsapoAuthorizationError, AsapoWrongInputError

ACCESS_TYPES = frozenset({"read", "write", "writeraw"})
ALGORITHM = "HS256"
BEAMTIME_PREFIX = "bt_"
BEAMLINE_PREFIX = "bl_"
# Far above any real token (~250 chars); bounds the work an attacker can make us do.
MAX_TOKEN_LENGTH = 8192
SECRET_NBYTES = 32

_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


def _b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64url_decode(segment: str, what: str) -> bytes:
    # Strict: the stdlib decoder silently drops characters outside the alphabet.
    if not _BASE64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise AsapoAuthorizationError(
            f"invalid token: the {what} is not unpadded base64url text; "
            "pass the token exactly as it was issued"
        )
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise AsapoAuthorizationError(f"invalid token: bad base64 in the {what} ({exc})") from exc


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AsapoAuthorizationError(f"invalid token: the {what} is not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise AsapoAuthorizationError(f"invalid token: the {what} is not a JSON object")
    return value


def _sign(secret: bytes, signing_input: bytes) -> bytes:
    return hmac.new(secret, signing_input, hashlib.sha256).digest()


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, (bytes, bytearray)) or not secret:
        raise AsapoWrongInputError("the token secret must be non-empty bytes")


def _validated_access_types(access_types: Iterable[str]) -> list[str]:
    if isinstance(access_types, str):
        access_types = (access_types,)  # a lone "read" would otherwise become r, e, a, d
    types = list(dict.fromkeys(access_types))
    unknown = [t for t in types if t not in ACCESS_TYPES]
    if unknown or not types:
        raise AsapoWrongInputError(
            f"access types must be a non-empty subset of {sorted(ACCESS_TYPES)}, got {types}"
        )
    return types


def _subject(beamtime: str | None, beamline: str | None) -> str:
    if (beamtime is None) == (beamline is None):
        raise AsapoWrongInputError("give exactly one of beamtime or beamline for a token")
    name = beamtime if beamtime is not None else beamline
    if not isinstance(name, str) or not name:
        raise AsapoWrongInputError("the beamtime or beamline of a token must be a non-empty str")
    return (BEAMTIME_PREFIX + name) if beamtime is not None else (BEAMLINE_PREFIX + name)


def issue_token(
    secret: bytes,
    *,
    beamtime: str | None = None,
    beamline: str | None = None,
    access_types: Iterable[str] = ("read",),
    expires_in: float | None,
    now: float | None = None,
) -> str:
    """Return an HS256 token for one beamtime (or beamline) with the given access types.

    ``expires_in`` is in seconds; ``None`` issues a token without expiry, as ASAPO does when no
    validity is given. ``now`` (Unix seconds) is for tests.
    """
    _check_secret(secret)
    if expires_in is not None and not expires_in > 0:
        raise AsapoWrongInputError(f"expires_in must be > 0 seconds or None, got {expires_in}")
    issued_at = time.time() if now is None else now
    claims: dict[str, Any] = {}
    if expires_in is not None:
        claims["exp"] = int(issued_at + expires_in)
    claims["iat"] = int(issued_at)
    claims["jti"] = secrets.token_hex(10)
    claims["sub"] = _subject(beamtime, beamline)
    claims["ExtraClaims"] = {"AccessTypes": _validated_access_types(access_types)}
    header = _b64url_encode(json.dumps({"alg": ALGORITHM, "typ": "JWT"}).encode())
    payload = _b64url_encode(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode("ascii")
    return f"{header}.{payload}.{_b64url_encode(_sign(bytes(secret), signing_input))}"


def _split(token: str) -> tuple[str, str, str]:
    if isinstance(token, (bytes, bytearray)):
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError:
            raise AsapoAuthorizationError("malformed token: not ASCII text") from None
    if not isinstance(token, str) or not token:
        raise AsapoAuthorizationError("no token given: pass the beamtime token you were issued")
    if len(token) > MAX_TOKEN_LENGTH:
        raise AsapoAuthorizationError(
            f"malformed token: {len(token)} characters, more than {MAX_TOKEN_LENGTH}"
        )
    parts = token.split(".")
    if len(parts) != 3:
        raise AsapoAuthorizationError(
            f"malformed token: expected header.payload.signature, got {len(parts)} part(s)"
        )
    return parts[0], parts[1], parts[2]


def _check_header(header: dict[str, Any]) -> None:
    alg = header.get("alg")
    if alg != ALGORITHM:
        # Covers "none" and RS/ES algorithms: never let the token choose how it is checked.
        raise AsapoAuthorizationError(
            f"invalid token: algorithm {alg!r} is not accepted, only {ALGORITHM}"
        )
    if "crit" in header:
        raise AsapoAuthorizationError("invalid token: critical header extensions are not supported")


def _check_times(claims: dict[str, Any], now: float) -> None:
    for name in ("exp", "nbf"):
        value = claims.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise AsapoAuthorizationError(f"invalid token: claim {name!r} is not a number")
    exp = claims.get("exp")
    if exp is not None and now >= exp:
        raise AsapoAuthorizationError(
            f"token expired {now - exp:.0f} s ago (exp {exp}); ask for a new token"
        )
    nbf = claims.get("nbf")
    if nbf is not None and now < nbf:
        raise AsapoAuthorizationError(f"token not valid yet: valid from {nbf} (now {now:.0f})")


def _check_subject(claims: dict[str, Any], beamtime: str | None, beamline: str | None) -> None:
    subject = claims.get("sub")
    if not isinstance(subject, str):
        raise AsapoAuthorizationError("invalid token: no 'sub' claim naming a beamtime or beamline")
    if subject.startswith(BEAMTIME_PREFIX):
        granted = subject[len(BEAMTIME_PREFIX) :]
        if beamtime is None or granted != beamtime:
            raise AsapoAuthorizationError(
                f"token is for beamtime {granted!r}, not for beamtime {beamtime!r}"
            )
    elif subject.startswith(BEAMLINE_PREFIX):
        granted = subject[len(BEAMLINE_PREFIX) :]
        if beamline is None or granted != beamline:
            raise AsapoAuthorizationError(
                f"token is for beamline {granted!r}, not for beamline {beamline!r}"
            )
    else:
        raise AsapoAuthorizationError(
            f"invalid token: subject {subject!r} is neither bt_<beamtime> nor bl_<beamline>"
        )


def token_access_types(claims: dict[str, Any]) -> list[str]:
    """The access types of verified ``claims`` (ASAPO's ``ExtraClaims`` or top level)."""
    extra = claims.get("ExtraClaims")
    types = extra.get("AccessTypes") if isinstance(extra, dict) else None
    if types is None:
        types = claims.get("AccessTypes")
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise AsapoAuthorizationError("invalid token: no list of access types (AccessTypes)")
    return types


def _check_access(claims: dict[str, Any], access: str) -> None:
    granted = token_access_types(claims)
    if access not in granted:
        raise AsapoAuthorizationError(
            f"token grants {granted} but this request needs {access!r}; "
            "ask for a token with that access type"
        )


PRODUCER_TYPES = {"processed": "write", "raw": "writeraw"}


def access_for_producer_type(producer_type: object) -> str:
    """The access type a producer of ``producer_type`` needs to send: ``write`` for a
    processed data source, ``writeraw`` for a raw one (ASAPO's receiver rule)."""
    access = PRODUCER_TYPES.get(producer_type) if isinstance(producer_type, str) else None
    if access is None:
        raise AsapoWrongInputError(
            f"producer type {producer_type!r:.40} is not one of {sorted(PRODUCER_TYPES)}")
    return access


def verify_token(
    secret: bytes,
    token: str,
    *,
    beamtime: str | None,
    access: str,
    beamline: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Check ``token`` for ``access`` to ``beamtime`` (or ``beamline``); return its claims.

    A ``bt_`` token must name ``beamtime``; a ``bl_`` token must name ``beamline``, which the
    caller resolves for the beamtime (pass ``beamtime=None`` for a beamline-wide request).
    Raises AsapoAuthorizationError saying what is wrong; AsapoWrongInputError if ``access``
    itself is not one of read / write / writeraw (a caller bug, not a bad token).
    """
    _check_secret(secret)
    if access not in ACCESS_TYPES:
        raise AsapoWrongInputError(f"access must be one of {sorted(ACCESS_TYPES)}, got {access!r}")
    header_b64, payload_b64, signature_b64 = _split(token)
    _check_header(_json_object(_b64url_decode(header_b64, "header"), "header"))
    signature = _b64url_decode(signature_b64, "signature")
    expected = _sign(bytes(secret), f"{header_b64}.{payload_b64}".encode("ascii"))
    if not hmac.compare_digest(signature, expected):
        raise AsapoAuthorizationError(
            "invalid token: bad signature (issued with another secret, or altered)"
        )
    claims = _json_object(_b64url_decode(payload_b64, "payload"), "payload")
    _check_times(claims, time.time() if now is None else now)
    _check_subject(claims, beamtime, beamline)
    _check_access(claims, access)
    return claims


def generate_secret(nbytes: int = SECRET_NBYTES) -> bytes:
    """A fresh random secret as ASCII text (usable as a key file by ASAPO's services too)."""
    return secrets.token_urlsafe(nbytes).encode("ascii")


def load_or_create_secret(path: str | os.PathLike[str], *, nbytes: int = SECRET_NBYTES) -> bytes:
    """Return the secret stored in ``path``, creating the file (mode 0600) if it is missing.

    Creation is atomic and never overwrites: the secret is written to a private temporary
    file which is then hard-linked into place, so a concurrent reader never sees a partial
    file and two creators agree on one secret. A file readable by others is refused.
    """
    path = Path(path)
    if not path.exists():
        _create_secret_file(path, generate_secret(nbytes))
    return _read_secret_file(path)


def _create_secret_file(path: Path, secret: bytes) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(secret + b"\n")
            tmp.flush()
            os.fsync(tmp.fileno())
        try:
            os.link(tmp_name, path)
        except FileExistsError:
            pass  # another process won the race; use its secret
    finally:
        os.unlink(tmp_name)


def _read_secret_file(path: Path) -> bytes:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o007:
        raise AsapoAuthorizationError(
            f"secret file {path} is accessible by others (mode {mode:04o}); run chmod 600 {path}"
        )
    secret = path.read_bytes().strip()
    if not secret:
        raise AsapoAuthorizationError(f"secret file {path} is empty; delete it to regenerate")
    return secret
