"""PII and secret scrubbing: generated secrets never survive, ordinary code is left alone."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmstack.data.pii import EMAIL, IP, PHONE, SECRET, looks_random, scrub, shannon_entropy

# Filler that cannot form PII by itself: letters, spaces, newlines, some punctuation.
filler = st.text(alphabet=string.ascii_letters + " \n,;()", max_size=40)
alnum = string.ascii_letters + string.digits


def _embed(before: str, secret: str, after: str) -> str:
    return f"{before} {secret} {after}"


emails = st.builds(
    lambda user, host, tld: f"{user}@{host}.{tld}",
    st.text(alphabet=alnum + "._+-", min_size=1, max_size=12).filter(lambda u: u[0] not in ".-+"),
    st.text(alphabet=string.ascii_lowercase + string.digits, min_size=1, max_size=10),
    st.sampled_from(["com", "org", "io", "co.uk", "example"]),
)
ipv4s = st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t)))
aws_keys = st.text(alphabet=string.ascii_uppercase + string.digits, min_size=16, max_size=16).map(lambda s: "AKIA" + s)
github = st.text(alphabet=alnum, min_size=36, max_size=40).map(lambda s: "ghp_" + s)
openai = st.text(alphabet=alnum, min_size=40, max_size=48).map(lambda s: "sk-" + s + "7")
slack = st.text(alphabet=alnum, min_size=10, max_size=30).map(lambda s: "xoxb-" + s)


@given(filler, st.one_of(emails, ipv4s, aws_keys, github, openai, slack), filler)
def test_generated_pii_is_removed(before, secret, after):
    out, counts = scrub(_embed(before, secret, after))
    assert secret not in out
    assert sum(counts.values()) >= 1


@given(st.lists(st.text(alphabet=alnum + "+/", min_size=64, max_size=64), min_size=1, max_size=5),
       st.sampled_from(["RSA ", "EC ", "", "OPENSSH ", "ENCRYPTED "]), st.booleans())
def test_pem_private_key_block_is_removed_even_truncated(lines, kind, complete):
    block = f"-----BEGIN {kind}PRIVATE KEY-----\n" + "\n".join(lines) + "\n"
    if complete:
        block += f"-----END {kind}PRIVATE KEY-----\n"
    out, counts = scrub("key:\n" + block + "\nafter = 1\n")
    assert counts["private_key"] == 1
    assert all(line not in out for line in lines)
    assert out.startswith("key:\n<SECRET>") and out.rstrip().endswith("after = 1")


@given(st.text(alphabet=alnum, min_size=20, max_size=40).filter(looks_random),
       st.sampled_from(["api_key", "API_KEY", "secret", "auth_token", "password", '"apiKey"']),
       st.sampled_from([" = ", "=", ": "]), st.sampled_from(["'", '"']))
def test_high_entropy_assignment_value_is_removed(value, name, op, quote):
    out, _ = scrub(f"{name}{op}{quote}{value}{quote}\n")
    assert out == f"{name}{op}{quote}{SECRET}{quote}\n"


@given(st.text(alphabet=string.printable, max_size=200))
@settings(max_examples=300)
def test_idempotent(text):
    once, _ = scrub(text)
    assert scrub(once) == (once, {})


@given(filler)
def test_text_without_digits_at_or_dashes_is_unchanged(text):
    assert scrub(text) == (text, {})


@pytest.mark.parametrize(
    "code",
    [
        "version = '3.11.7'",
        "oid = '1.3.6.1.4.1'",
        "evens = x[::2]; odd = a[1::2]; tail = b[::1000]",
        "@property\ndef size(self): return self.a @ self.b",
        "password = 'changeme'",
        "token = 'my_identifier_name_without_digits'",
        "TIMEOUT = 12:30:45",
        "ids = [2021-03-15, 123 456 7890]",
        "std::vector<int> v;",
        "assert ipaddress.ip_address('::1').is_loopback",
        "big = 1234567890; pi = 3.14159",
    ],
)
def test_ordinary_code_is_left_alone(code):
    assert scrub(code) == (code, {})


@pytest.mark.parametrize(
    "text, expected",
    [
        ("call (555) 123-4567 now", f"call {PHONE} now"),
        ("call 555.123.4567 now", f"call {PHONE} now"),
        ("tel:+44 20 7946 0958", f"tel:{PHONE}"),
        ("ping 10.0.0.1.", f"ping {IP}."),
        ("[2001:db8:85a3::8a2e:370:7334]:443", f"[{IP}]:443"),
        ("<jane.doe+tag@mail.example.org>", f"<{EMAIL}>"),
        ("url = 'https://hooks.slack.com/services/T000/B000/XXXX'", f"url = '{SECRET}'"),
    ],
)
def test_formats(text, expected):
    assert scrub(text)[0] == expected


@given(st.text(min_size=1, max_size=50))
def test_entropy_bounds(s):
    import math

    assert 0.0 <= shannon_entropy(s) <= math.log2(len(set(s))) + 1e-9
