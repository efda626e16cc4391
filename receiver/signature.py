"""Twilio request signing: the only module that knows how X-Twilio-Signature is made.

The HMAC itself is the ``twilio`` package's (``RequestValidator.compute_signature``); this
module decides *which* URL and parameters it is computed over, and tries several auth tokens so
that a token can be rotated without dropping callbacks.

``RequestValidator.validate`` always computes two HMACs (the URL with and without its default
port) because Twilio is inconsistent about the port. We compute the variant that matches the
URL as received first, and the other only when that fails: same acceptance, half the work on
the common path.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import lru_cache
from urllib.parse import urlsplit

from twilio.request_validator import (
    HMAC_SHA1,
    RequestValidator,
    add_port,
    compare,
    get_signature_algorithm,
    remove_port,
)

# Base64 of a SHA-256 digest is 44 characters; anything much longer is not a signature.
MAX_SIGNATURE_LENGTH = 128
# What a signature looks like (base64 of a SHA-1 or SHA-256 digest): checked before the body is
# even read, so a request that cannot be signed costs nothing.
SIGNATURE_FORM = re.compile(rf"^[A-Za-z0-9+/]{{20,{MAX_SIGNATURE_LENGTH - 2}}}={{0,2}}\Z")


Params = Mapping[str, Sequence[str]]


class _MultiParams(dict):
    """A dict of name -> list of values that ``RequestValidator.get_values`` understands."""

    def getall(self, name: str) -> Sequence[str]:
        return self[name]


@lru_cache(maxsize=16)
def _validator(token: str) -> RequestValidator:
    return RequestValidator(token)


def well_formed(signature: str) -> bool:
    """Whether ``signature`` can be a signature at all (no HMAC computed)."""
    return bool(SIGNATURE_FORM.match(signature))


def url_variants(url: str) -> Iterator[str]:
    """The URL as received first, then its twin with the default port added or removed.

    Lazily: the twin costs a URL parse, and the common path never needs it.
    """
    yield url
    parsed = urlsplit(url)
    yield remove_port(parsed) if parsed.port else add_port(parsed)


def compute(token: str, url: str, params: Params, algorithm: str = HMAC_SHA1) -> str:
    """The signature Twilio sends for ``url`` and form ``params`` (empty for GET)."""
    return _validator(token).compute_signature(url, _MultiParams(params), algorithm)


def signed_text(url: str, params: Params) -> str:
    """The text the HMAC covers, as ``RequestValidator.compute_signature`` builds it: the URL,
    then each name in sorted order followed by each of its distinct values, sorted, with no
    separator. Bodies that differ only by repeated values or by where a name ends and its value
    begins have the same text, hence the same signature."""
    parts = [url]
    for name in sorted(params):
        parts += (name + value for value in sorted(set(params[name])))
    return "".join(parts)


def request_digest(method: str, url: str, params: Params) -> str:
    """One signed request's identity: the SHA-256 of its signed text, so every request that
    verifies with one signature has one digest. A GET's signature covers its URL alone (its
    parameters are the query string); the URL's port is left out, as a signature holds with
    and without it (``url_variants``)."""
    with contextlib.suppress(ValueError):  # a port that is not a number: no twin to fold onto
        url = remove_port(urlsplit(url))
    text = signed_text(url, params if method.upper() == "POST" else {})
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def is_valid(
    url: str,
    params: Params,
    signature: str | None,
    tokens: Iterable[str],
    settings_header: str | None = None,
) -> bool:
    """True when ``signature`` was made by any of ``tokens`` for this URL and these params."""
    if not signature or len(signature) > MAX_SIGNATURE_LENGTH:
        return False
    algorithm = get_signature_algorithm(settings_header)
    multi = _MultiParams(params)
    tokens = tuple(tokens)
    try:
        for candidate in url_variants(url):
            for token in tokens:
                computed = _validator(token).compute_signature(candidate, multi, algorithm)
                if compare(computed, signature):
                    return True
    except ValueError:
        # An algorithm this twilio release does not know: not a signature we can trust.
        return False
    return False
