"""Credentials never reach MLflow: keys and values that look like one are
replaced wherever pbtflow writes (params, artifacts, error tags, messages)."""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

REDACTED = "***"  # what a credential is replaced with, wherever pbtflow writes
# Keys that look like credentials, at any depth ("db.password", "sim.auth.client_secret").
_SECRET_KEY = re.compile(
    r"(token|secret|passw|pwd|credential|connection_?str|conn_?str|private_?key|signature|cookie|"
    r"(^|[._/-])(api_?|access_?|account_?|storage_?|ssh_?)?keys?($|[._/-])|"
    r"(^|[._/-])auth(entication|orization|_?token)?($|[._/-])|(^|[._/-])sas($|[._/-]))",
    re.IGNORECASE)
# Values that are credentials whatever their key: connection strings with a
# password or account key, bearer tokens, SAS signatures, JWTs, URLs with a password.
_SECRET_VALUE = re.compile(
    r"((^|[;\s])(password|pwd|accountkey|sharedaccesskey|sharedaccesssignature)\s*=)|"
    r"(\bbearer\s+\S{6,})|([?&]sig=[^&\s]+)|(\beyJ[\w-]{6,}\.[\w-]{6,}\.[\w-]+)|"
    r"(://[^/\s:@]+:[^/\s@]+@)", re.IGNORECASE)


def is_secret(key: str) -> bool:
    """Whether a config key looks like a credential, never to be written to MLflow."""
    return bool(_SECRET_KEY.search(str(key)))


def looks_secret(value: Any) -> bool:
    """Whether a value is a credential by its form (a connection string, a token...)."""
    return isinstance(value, str) and bool(_SECRET_VALUE.search(value))


def scrub(value: Any) -> Any:
    """``value`` with every credential replaced, at any depth of mappings and
    lists: whatever sits under a key that looks like one, and every string
    that looks like one whatever its key."""
    if isinstance(value, Mapping):
        return {k: REDACTED if is_secret(k) else scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return REDACTED if looks_secret(value) else value


def secret_values(value: Any, secret: bool = False) -> set[str]:
    """The credentials inside a config, as strings, to take out of free text
    (error messages) where no key says what is what."""
    if isinstance(value, Mapping):
        return set().union(*(secret_values(v, secret or is_secret(k)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return set().union(*(secret_values(v, secret) for v in value))
    text = str(value) if value is not None else ""
    return {text} if len(text) >= 4 and (secret or looks_secret(value)) else set()


# The same forms inside free text: the prefix is kept, the credential replaced.
_SECRET_IN_TEXT = re.compile(
    r"((?:password|pwd|accountkey|sharedaccesskey|sharedaccesssignature)\s*=\s*)[^;\s'\"]+|"
    r"(bearer\s+)[^\s'\"]+|([?&]sig=)[^&\s'\"]+|()\beyJ[\w-]{6,}\.[\w-]{6,}\.[\w-]+|"
    r"(://[^/\s:@]+:)[^/\s@]+(?=@)", re.IGNORECASE)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without the given credentials and without anything that looks
    like one (``Password=...``, ``Bearer ...``)."""
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return _SECRET_IN_TEXT.sub(
        lambda m: next((g for g in m.groups() if g is not None), "") + REDACTED, text)
