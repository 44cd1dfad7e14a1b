"""Credential redaction of probe URLs and the keyed hash that still identifies the endpoint."""

from __future__ import annotations

import pytest

from tracer.keys.derive import hkdf_key
from tracer.probing.urls import REDACTED, Endpoint, redact_url, url_hmac

MASTER = bytes(range(32))


@pytest.mark.parametrize("url,public", [
    ("http://user:PASS@127.0.0.1:8080/v1/models/m:predict?api_key=KEY", "http://127.0.0.1:8080/v1/models/m:predict?api_key=REDACTED"),
    ("https://h/p?x=1&Access_Token=t&X-Amz-Signature=s&sig=z&format=json", "https://h/p?x=1&Access_Token=REDACTED&X-Amz-Signature=REDACTED&sig=REDACTED&format=json"),
    ("https://h/p?apiKey=a&client_secret=b&PASSWD=c&auth=d&credential=e", "https://h/p?apiKey=REDACTED&client_secret=REDACTED&PASSWD=REDACTED&auth=REDACTED&credential=REDACTED"),
    ("http://h:9/a?page=2&q=cats#frag", "http://h:9/a?page=2&q=cats"),
    ("http://[::1]:80/a", "http://[::1]:80/a"),
    ("http://tok@h/a", "http://h/a"),
])
def test_redact_url(url: str, public: str) -> None:
    assert redact_url(url) == public
    ep = Endpoint.parse(url)
    assert ep.public == public and "@" not in ep.request_url
    for secret in (":PASS@", "=KEY", "=t&", "=s&", "=z&", "=a&", "=c&"):
        assert secret not in ep.public


def test_endpoint_splits_userinfo_and_knows_it_had_credentials() -> None:
    ep = Endpoint.parse("http://us%40er:p%3Ass@h/a?api_key=K")
    assert ep.basic_auth == ("us@er", "p:ss") and ep.request_url == "http://h/a?api_key=K" and ep.has_credentials
    assert not Endpoint.parse("http://h/a?page=1").has_credentials
    msg = ep.scrub("refused http://us%40er:p%3Ass@h/a?api_key=K: p:ss K")
    assert "p:ss" not in msg and "api_key=K" not in msg and msg.count(REDACTED) >= 2


def test_url_hmac_is_keyed_by_a_new_derivation_and_binds_the_full_url() -> None:
    import hashlib
    import hmac

    url = "http://user:PASS@h/a?api_key=KEY"
    key = hkdf_key(MASTER, "probe/endpoint-url")
    assert url_hmac(MASTER, url) == hmac.new(key, url.encode(), hashlib.sha256).hexdigest()
    assert url_hmac(MASTER, url) != url_hmac(MASTER, "http://user:PASS@h/a?api_key=KEY2")
    assert url_hmac(MASTER, url) != url_hmac(bytes(32), url)
    assert key not in (hkdf_key(MASTER, "cache/codewords"),)
