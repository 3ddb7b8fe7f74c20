"""PII and secret scrubbing: replace emails, phone numbers, IP addresses and credentials.

A model memorizes rare strings it sees in training (Carlini et al. 2021, "Extracting Training
Data from Large Language Models"), so personal data and - worse - live credentials must be
replaced before tokenization. Each rule is a regular expression plus the placeholder that
replaces a match; ``RULES`` lists them in the order they run. The patterns follow the
conventions of BigCode's PII pipeline (Allal et al. 2023, "SantaCoder: don't reach for the
stars!", section 3) and the public token formats documented by AWS, GitHub, OpenAI and Slack.

Care is taken not to mangle ordinary code: a 3-part version number (``3.11.7``) is not an IPv4
address, a slice ``x[::2]`` is not an IPv6 address, ``@decorator`` is not an email, and the
generic ``api_key = "..."`` rule only fires on long, high-entropy values (``password =
"changeme"`` stays). Placeholders contain no character any rule matches, and ``scrub`` repeats
until nothing changes, so scrubbing is idempotent.

Run it: ``python -m lmstack.data.pii < file.txt`` prints the scrubbed text.
"""

from __future__ import annotations

import ipaddress
import math
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import regex

EMAIL, PHONE, IP, SECRET = "<EMAIL>", "<PHONE>", "<IP>", "<SECRET>"


@dataclass(frozen=True)
class Rule:
    """A pattern, what replaces each match (a placeholder or a function of the match), and a needle.

    ``needle``, if set, is a cheap pattern found on every line the full pattern can match;
    the full pattern then runs only on those lines. Python regex engines try a pattern that
    starts with a character class at every position, which is slow on a 30 MB corpus; a
    needle that starts with a literal (``@``) is found by a fast substring search.
    """

    pattern: regex.Pattern[str]
    replace: str | Callable[[regex.Match[str]], str]
    needle: regex.Pattern[str] | None = None


def shannon_entropy(s: str) -> float:
    """Bits of entropy per character of `s`'s empirical character distribution.

    >>> shannon_entropy("aaaa")
    0.0
    >>> shannon_entropy("abcd")
    2.0
    """
    if not s:
        return 0.0
    n = len(s)
    return sum(c / n * math.log2(n / c) for c in Counter(s).values())


def looks_random(value: str, min_length: int = 16, min_entropy: float = 3.0) -> bool:
    """Whether a value looks like a generated credential: long, letters and digits, high entropy.

    >>> looks_random("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    True
    >>> looks_random("my_secret_password_name")  # no digit: an identifier, not a key
    False
    >>> looks_random("1111111111aaaaaaaa")  # low entropy
    False
    """
    return (
        len(value) >= min_length
        and any(c.isdigit() for c in value)
        and any(c.isalpha() for c in value)
        and shannon_entropy(value) >= min_entropy
    )


def _scrub_assignment(m: regex.Match[str]) -> str:
    """Keep `name = "` and the quotes, replace only a random-looking value."""
    if not looks_random(m.group("value")):
        return m.group(0)
    return f"{m.group('head')}{m.group('q')}{SECRET}{m.group('q')}"


def _scrub_ipv6(m: regex.Match[str]) -> str:
    """Replace a colon-hex run only if it parses as IPv6 and is not code-shaped like `1::2`."""
    candidate = m.group(0)
    try:
        ipaddress.IPv6Address(candidate.split("%")[0])
    except ValueError:
        return candidate
    groups = [g for g in regex.split(r"[:.]", candidate.split("%")[0]) if g]
    # "::", "::1" and slices like "x[1::2]" or "a[::1000]" parse as IPv6 too; real addresses
    # have 3+ groups or two groups one of which is 4 digits long (fe80::1).
    if len(groups) >= 3 or (len(groups) == 2 and any(len(g) == 4 for g in groups)):
        return IP
    return candidate


_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"

# Order matters: whole key blocks and token formats go before the generic patterns, so an
# email or IP inside a key is not half-replaced first.
RULES: dict[str, Rule] = {
    "private_key": Rule(
        # A PEM block, or a truncated one: BEGIN and every following line that is all
        # base64, a "Name: value" header (Proc-Type, DEK-Info) or blank.
        regex.compile(
            r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----(?:[\s\S]*?-----END[A-Z0-9 ]*PRIVATE KEY-----"
            r"|(?:[ \t]*\r?\n(?:[A-Za-z0-9+/=]+(?=[ \t]*(?:\r?\n|$))|[A-Za-z-]+:[^\n]*)?)*)"
        ),
        SECRET,
    ),
    "aws_key": Rule(regex.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA)[0-9A-Z]{16}\b"), SECRET),
    "github_token": Rule(
        regex.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b"), SECRET
    ),
    "openai_key": Rule(regex.compile(r"\bsk-(?:proj-|svcacct-|admin-)?(?=[A-Za-z0-9_-]*\d)[A-Za-z0-9_-]{32,}"), SECRET),
    "slack_token": Rule(regex.compile(r"\bxox[abposre]-[A-Za-z0-9-]{10,}"), SECRET),
    "slack_webhook": Rule(regex.compile(r"https://hooks\.slack\.com/services/[A-Za-z0-9/_-]+"), SECRET),
    "secret_assignment": Rule(
        regex.compile(
            r"(?P<head>(?i:api[_-]?key|secret|token|passw(?:or)?d|credential|auth|access[_-]?key)[\w-]*"
            r"['\"]?[ \t]*[:=][ \t]*)(?P<q>['\"])(?P<value>[^'\"\s]{16,})(?P=q)"
        ),
        _scrub_assignment,
        needle=regex.compile(r"[:=][ \t]*['\"][^'\"\s]{16}"),
    ),
    "email": Rule(
        regex.compile(r"(?<![\w.%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
        EMAIL,
        needle=regex.compile(r"@[A-Za-z0-9-]+\."),
    ),
    "ipv6": Rule(regex.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f.]*(?:%\w+)?(?![\w:])"), _scrub_ipv6),
    # Not preceded/followed by another dotted number: 1.2.3.4.5 is an OID or a version.
    "ipv4": Rule(regex.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d)"), IP),
    "phone": Rule(
        # International (+CC then 2-4 digit groups), (555) 123-4567, or 555-123-4567 with one
        # separator used throughout. Space-separated digit runs are too often number tables.
        regex.compile(
            r"(?<![\w.+-])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)|\d{1,4})(?:[ .-]\d{2,4}){2,4}"
            r"|\(\d{3}\) ?\d{3}[-.]\d{4}|\d{3}(?P<sep>[-.])\d{3}(?P=sep)\d{4})(?![\w]|[.-]\d)"
        ),
        PHONE,
        needle=regex.compile(r"\d[ .-]\d\d"),
    ),
}


def _sub(rule: Rule, text: str, replace: Callable[[regex.Match[str]], str]) -> str:
    """Apply `rule` to the whole text, or, if it has a needle, only to lines the needle finds."""
    if rule.needle is None:
        return rule.pattern.sub(replace, text)
    parts, done = [], 0
    for hit in rule.needle.finditer(text):
        if hit.start() < done:
            continue  # This line has already been scrubbed.
        start = text.rfind("\n", 0, hit.start()) + 1
        end = text.find("\n", hit.end())
        end = len(text) if end < 0 else end
        parts += [text[done:start], rule.pattern.sub(replace, text[start:end])]
        done = end
    return "".join(parts) + text[done:] if parts else text


def scrub_once(text: str, rules: dict[str, Rule] = RULES) -> tuple[str, Counter[str]]:
    """One pass of every rule; returns the new text and how many matches each rule replaced."""
    counts: Counter[str] = Counter()
    for name, rule in rules.items():

        def replace(m: regex.Match[str], rule: Rule = rule, name: str = name) -> str:
            new = rule.replace if isinstance(rule.replace, str) else rule.replace(m)
            if new != m.group(0):
                counts[name] += 1
            return new

        text = _sub(rule, text, replace)
    return text, counts


def scrub(text: str, rules: dict[str, Rule] = RULES) -> tuple[str, Counter[str]]:
    """Replace PII and secrets with placeholders until a fixpoint; returns text and counts.

    >>> scrub("mail bob@example.com or call +1 555-123-4567")[0]
    'mail <EMAIL> or call <PHONE>'
    >>> scrub("host = '192.168.0.1'  # python 3.11.7")[0]
    "host = '<IP>'  # python 3.11.7"
    >>> scrub("fe80::1%eth0 and x[::2] and 2001:db8::ff00:42:8329")[0]
    '<IP> and x[::2] and <IP>'
    >>> scrub('AWS_ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"')[0]
    'AWS_ACCESS_KEY_ID = "<SECRET>"'
    >>> scrub('api_key = "q8Zk3vN0pX7rT2mW9yB4"; password = "changeme"')[0]
    'api_key = "<SECRET>"; password = "changeme"'
    >>> scrub("-----BEGIN RSA PRIVATE KEY-----\\nMIIEow==\\n-----END RSA PRIVATE KEY-----\\nok")[0]
    '<SECRET>\\nok'
    """
    total: Counter[str] = Counter()
    while True:
        new, counts = scrub_once(text, rules)
        total += counts
        if new == text:
            return new, total
        text = new


def main() -> None:
    """Scrub standard input to standard output and report the counts on standard error."""
    text, counts = scrub(sys.stdin.read())
    sys.stdout.write(text)
    print(dict(counts), file=sys.stderr)


if __name__ == "__main__":
    main()
