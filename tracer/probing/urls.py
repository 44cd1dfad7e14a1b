"""Probe URLs without their credentials: what is journaled, shown and published, and what is sent.

A URL may carry secrets in two places: userinfo (``https://user:PASS@host/``)
and query parameters (``?api_key=KEY``). :func:`redact_url` is the one form
that ever leaves the process: ledger entries, the journal, evidence, ``--json``
output and error messages. It drops userinfo and the fragment, and replaces
the value of every query parameter whose name looks like a secret (contains,
case-insensitively, one of :data:`SECRET_PARAM_WORDS`) with ``REDACTED``.

So that the vendor can still prove which endpoint it probed, the journal
records ``url_hmac(master, url)``: HMAC-SHA256 of the full URL under a key
derived from the master secret (purpose ``probe/endpoint-url``). Anyone given
the URL and the master secret can recompute it; nobody else can test guesses.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from hashlib import sha256
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from ..keys.derive import hkdf_key

__all__ = ["SECRET_PARAM_WORDS", "REDACTED", "Endpoint", "redact_url", "url_hmac", "URL_HMAC_PURPOSE"]

#: A query parameter is secret when its name contains one of these (case-insensitive).
SECRET_PARAM_WORDS = ("key", "token", "secret", "password", "passwd", "pwd", "pass", "auth", "signature", "sig",
                      "credential", "cred", "session", "jwt", "bearer", "cookie", "private", "access")
REDACTED = "REDACTED"
URL_HMAC_PURPOSE = "probe/endpoint-url"
_NORMALIZE = re.compile(r"[^a-z0-9]")


def _secret_name(name: str) -> bool:
    n = _NORMALIZE.sub("", name.lower())  # api-key, api_key, apiKey, X-Amz-Signature all match
    return any(w in n for w in SECRET_PARAM_WORDS)


def _netloc(host: str | None, port: int | None) -> str:
    host = host or ""
    if ":" in host:
        host = f"[{host}]"
    return host + (f":{port}" if port else "")


def _port(parts) -> int | None:
    try:
        return parts.port
    except ValueError:
        return None


def redact_url(url: str) -> str:
    """``url`` with userinfo and fragment dropped and secret-looking query values replaced by ``REDACTED``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if not parts.scheme or not parts.netloc:
        return "<URL without a host>" if "@" in url or "?" in url else url
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(_secret_name(k) for k, _ in pairs):  # rebuilt only when needed: other URLs stay byte for byte
        query = urlencode([(k, REDACTED if _secret_name(k) else v) for k, v in pairs], safe="[]:/,", quote_via=quote)
    return urlunsplit((parts.scheme, _netloc(parts.hostname, _port(parts)), parts.path, query, ""))


def url_hmac(master: bytes, url: str) -> str:
    """HMAC-SHA256 (hex) of the full URL under the master-derived key for :data:`URL_HMAC_PURPOSE`."""
    return hmac.new(hkdf_key(master, URL_HMAC_PURPOSE), url.encode("utf-8"), sha256).hexdigest()


@dataclass(frozen=True)
class Endpoint:
    """One probe URL, split into what is sent (``request_url``, ``basic_auth``) and what is shown (``public``)."""

    url: str  # as given, credentials included: only ever in memory
    public: str  # redact_url(url): the only form written anywhere
    request_url: str  # url without userinfo (httpx must not turn userinfo into an Authorization header itself)
    basic_auth: tuple[str, str] | None  # the userinfo, used only when no explicit Authorization header is given

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        auth = None
        if parts.username is not None or parts.password is not None:
            auth = (unquote(parts.username or ""), unquote(parts.password or ""))
        request = urlunsplit((parts.scheme, _netloc(parts.hostname, _port(parts)), parts.path, parts.query, ""))
        return cls(url=url, public=redact_url(url), request_url=request, basic_auth=auth)

    @property
    def has_credentials(self) -> bool:
        """True when the journaled form lost something (userinfo or a secret query value)."""
        query = urlsplit(self.url).query
        return self.basic_auth is not None or any(_secret_name(k) for k, _ in parse_qsl(query, keep_blank_values=True))

    def secrets(self) -> list[str]:
        """Every secret string in the URL, longest first (to scrub them from error messages)."""
        parts = urlsplit(self.url)
        found = [self.basic_auth[1]] if self.basic_auth and self.basic_auth[1] else []
        found += [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if _secret_name(k) and v]
        if parts.netloc and "@" in parts.netloc:
            found.append(parts.netloc.rsplit("@", 1)[0])
        return sorted(set(found), key=len, reverse=True)

    def scrub(self, text: str) -> str:
        """``text`` (an error message) with the full URL and each of its secrets replaced."""
        text = text.replace(self.url, self.public).replace(self.request_url, self.public)
        for s in self.secrets():
            if len(s) >= 3:
                text = text.replace(s, REDACTED).replace(quote(s, safe=""), REDACTED)
        return text
