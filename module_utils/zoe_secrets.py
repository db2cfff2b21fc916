# -*- coding: utf-8 -*-
# Shared by the zoe-consolidate modules: decide what is a secret and mask it before it reaches
# a diff, a message, a report or a module result. Standard library only (runs on the managed host).

from __future__ import annotations

import re

MASK = "********"

# Column and variable names whose values are secrets (matched as lower-case substrings).
DEFAULT_SECRET_NAMES = (
    "password", "passwd", "pwd", "hash", "token", "secret", "api_key", "apikey",
    "private_key", "access_key", "credential", "salt", "cookie", "session_key", "jwt", "pass", "_key",
)

# Values that look like secrets whatever their name: password-hash formats, JWTs, long hex/base64 blobs.
_SECRET_VALUE_RES = (
    re.compile(r"^(pbkdf2_[a-z0-9]+|argon2(id|i|d)?|bcrypt|scrypt|sha(256|512)_crypt)\$"),
    re.compile(r"^\$(2[abxy]?|5|6|argon2(id|i|d)?|scrypt)\$"),
    re.compile(r"^eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*$"),
    re.compile(r"^(sk|pk|rk|ghp|gho|xox[abp])[-_][A-Za-z0-9_-]{6,}$"),
    re.compile(r"^[A-Fa-f0-9]{32,}$"),
)


def is_secret_name(name, secret_names=DEFAULT_SECRET_NAMES):
    """True when a column, key or variable name says its value is a secret."""
    lowered = str(name).lower()
    return any(part in lowered for part in secret_names)


def looks_like_secret(value):
    """True when a value has the shape of a password hash, token or key."""
    if not isinstance(value, str):
        return False
    text = value.strip()
    return any(regex.search(text) for regex in _SECRET_VALUE_RES)


def mask_value(name, value, secret_names=DEFAULT_SECRET_NAMES):
    """The value to show for `name`: MASK when the name or the value says it is secret."""
    if value is None:
        return None
    if is_secret_name(name, secret_names) or looks_like_secret(value):
        return MASK
    return value


def mask_row(row, secret_names=DEFAULT_SECRET_NAMES):
    """A copy of a mapping of column -> value with every secret value masked."""
    return {key: mask_value(key, value, secret_names) for key, value in row.items()}


_ASSIGNMENT_RE = re.compile(
    r"(?P<key>[A-Za-z_][A-Za-z0-9_.-]*)(?P<sep>[ \t]*[:=][ \t]*)"
    r"(?P<value>\"(?:[^\"\\\r\n]|\\.)*\"?|'[^'\r\n]*'?|[^\s'\"]+(?:[ \t]+[^\s'\"#][^\s'\"]*)*)")
_URL_CREDENTIALS_RE = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s:/@'\"]*)(?P<colon>:?)"
                                 r"(?P<password>[^\s/@'\"]*)@")


def mask_url_credentials(text):
    """`scheme://user:password@host` -> `scheme://user:********@host` (a lone `scheme://token@` loses the token)."""
    def _sub(match):
        if match.group("colon"):
            return "%s%s:%s@" % (match.group("scheme"), match.group("user"), MASK)
        return "%s%s@" % (match.group("scheme"), MASK)

    return _URL_CREDENTIALS_RE.sub(_sub, text)


def mask_text(text, secret_names=DEFAULT_SECRET_NAMES):
    """Mask `KEY=value` / `KEY: value` assignments whose key or value is secret, and credentials in URLs, in free text.

    A quoted value is masked to its closing quote and an unquoted one to the end of the line (a space or a `#`
    inside a value does not end it). Used on diffs of compose files, env files and source files before they enter a
    result.
    """
    def _sub(match):
        value = match.group("value")
        inner = value.strip("'\"")
        if is_secret_name(match.group("key"), secret_names) or looks_like_secret(inner):
            quote = value[0] if value[:1] in "'\"" else ""
            return "%s%s%s%s%s" % (match.group("key"), match.group("sep"), quote, MASK,
                                   quote if len(value) > 1 and value[-1:] == quote else "")
        return match.group(0)

    return _ASSIGNMENT_RE.sub(_sub, mask_url_credentials(text))
