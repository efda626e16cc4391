"""Signature checks against the twilio package's own known vectors."""

import base64
import hashlib
import hmac

import pytest

from receiver import signature

PARAMS = {
    "CallSid": ["CA1234567890ABCDE"],
    "Digits": ["1234"],
    "From": ["+14158675309"],
    "To": ["+18005551212"],
    "Caller": ["+14158675309"],
}
VECTORS = [
    ("https://mycompany.com/myapp.php?foo=1&bar=2", "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
    ("https://mycompany.com:443/myapp.php?foo=1&bar=2", "kvajT1Ptam85bY51eRf/AJRuM3w="),
    ("http://mycompany.com:80/myapp.php?foo=1&bar=2", "0ZXoZLH/DfblKGATFgpif+LLRf4="),
    ("http://mycompany.com:1234/myapp.php?foo=1&bar=2", "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="),
]


@pytest.mark.parametrize(("url", "expected"), VECTORS)
def test_compute_matches_known_vectors(url, expected):
    assert signature.compute("12345", url, PARAMS) == expected


@pytest.mark.parametrize(("url", "expected"), VECTORS)
def test_known_vectors_validate(url, expected):
    assert signature.is_valid(url, PARAMS, expected, ["12345"])


def test_default_port_is_tried_both_ways():
    signed_with_port = "kvajT1Ptam85bY51eRf/AJRuM3w="
    assert signature.is_valid(
        "https://mycompany.com/myapp.php?foo=1&bar=2", PARAMS, signed_with_port, ["12345"]
    )
    signed_without_port = "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert signature.is_valid(
        "https://mycompany.com:443/myapp.php?foo=1&bar=2", PARAMS, signed_without_port, ["12345"]
    )


def test_non_default_port_is_not_dropped():
    sig = "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="
    assert not signature.is_valid(
        "http://mycompany.com/myapp.php?foo=1&bar=2", PARAMS, sig, ["12345"]
    )


@pytest.mark.parametrize(
    "url",
    [
        "http://mycompany.com/myapp.php?foo=1&bar=2",  # scheme changed
        "https://evil.com/myapp.php?foo=1&bar=2",  # host changed
        "https://mycompany.com/myapp.php?foo=1&bar=3",  # query changed
        "https://mycompany.com/other.php?foo=1&bar=2",  # path changed
    ],
)
def test_other_url_fails(url):
    assert not signature.is_valid(url, PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8=", ["12345"])


def test_changed_param_fails():
    params = dict(PARAMS, Digits=["1235"])
    url, sig = VECTORS[0]
    assert not signature.is_valid(url, params, sig, ["12345"])


def test_rotated_tokens_any_one_passes():
    url, sig = VECTORS[0]
    assert signature.is_valid(url, PARAMS, sig, ["new-token", "12345"])
    assert not signature.is_valid(url, PARAMS, sig, ["new-token", "other"])


@pytest.mark.parametrize("bad", [None, "", "x" * 500, "RSOYDt4T1cUTdK1PDd93/VVr8B8"])
def test_missing_or_malformed_signature_fails(bad):
    assert not signature.is_valid(VECTORS[0][0], PARAMS, bad, ["12345"])


def test_sha256_when_settings_header_says_so():
    url = VECTORS[0][0]
    sig = signature.compute("12345", url, PARAMS, "HMAC_SHA256")
    header = "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256"
    assert signature.is_valid(url, PARAMS, sig, ["12345"], header)
    assert not signature.is_valid(url, PARAMS, sig, ["12345"])
    assert not signature.is_valid(url, PARAMS, sig, ["12345"], "algorithm=HMAC_MD5")


def test_repeated_values_are_sorted_and_deduplicated():
    url = VECTORS[0][0]
    params = {"A": ["2", "1", "1"]}
    sig = signature.compute("12345", url, {"A": ["1", "2"]})
    assert signature.is_valid(url, params, sig, ["12345"])


def test_the_signed_text_is_what_the_hmac_covers():
    url = VECTORS[0][0]
    params = {**PARAMS, "A": ["2", "1", "1"]}
    text = signature.signed_text(url, params).encode()
    mac = base64.b64encode(hmac.new(b"12345", text, hashlib.sha1).digest()).decode()
    assert mac == signature.compute("12345", url, params)


def test_requests_with_one_signature_have_one_digest():
    url = "https://rtt.example.com/cb"
    digest = signature.request_digest("POST", url, {"Name": [""], "Code": ["en-US"]})
    for method, twin_url, params in (
        ("POST", url, {"Code": ["en-USName"]}),  # a value that swallowed the next name
        ("POST", url, {"Code": ["en-US", "en-US"], "Name": [""]}),  # a value repeated
        ("POST", "https://rtt.example.com:443/cb", {"Code": ["en-USName"]}),  # the port twin
        ("GET", url + "Codeen-USName", {"Code": ["en-US"]}),  # a GET signs its URL alone
    ):
        assert signature.request_digest(method, twin_url, params) == digest, params
    assert signature.request_digest("POST", url, {"Code": ["en-GB"]}) != digest
