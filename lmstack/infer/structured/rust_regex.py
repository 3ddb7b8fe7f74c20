"""A regex as the reference engine reads it (regex.py), printed in Rust's regex syntax.

The fast engine hands patterns to llguidance, which reads them as Rust's `regex` crate does:
there `.` is any character but \\n, and \\d, \\w, \\s are Unicode classes, where the reference
engine takes the sets that are safe under both Python's `re` and ECMA-262 (regex.py's module
doc). So that both engines generate one language, the fast engine does not pass a pattern as
written: it parses it with the reference's parser and passes this printing of the result, in
which every character class is an explicit set of code points (`[\\x{30}-\\x{39}]`), every
group is non-capturing and the anchors are already applied (full match). A pattern the
reference refuses raises its ConfigError; the caller may then pass the pattern as written.

    >>> rust_regex(r"a.\\d{2,}|(x)")
    '(?:[\\\\x{61}][\\\\x{0}-\\\\x{9}\\\\x{b}-\\\\x{c}\\\\x{e}-\\\\x{2027}\\\\x{202a}-\\\\x{d7ff}\\\\x{e000}-\\\\x{10ffff}](?:[\\\\x{30}-\\\\x{39}]){2,}|[\\\\x{78}])'
    >>> rust_regex(r"^ab$", search=True), rust_regex("[^\\\\s\\\\S]")
    ('[\\\\x{61}][\\\\x{62}]', '[a&&b]')

Run the doctests: .venv/bin/python -m pytest -q lmstack/infer/structured/rust_regex.py
"""

from __future__ import annotations

from lmstack.infer.structured.grammar import Alt, Expr, Ref, Repeat, Seq
from lmstack.infer.structured.regex import Ranges, regex_expr
from lmstack.infer.structured.utf8 import MAX_CODE_POINT, code_point_trie, complement, normalize

NOTHING = "[a&&b]"  # an empty class (the intersection of two): matches no character


def rust_regex(pattern: str, *, search: bool = False) -> str:
    """`pattern` (full match; `search`: anywhere, as JSON Schema's `pattern`) in Rust syntax."""
    classes: list[Ranges] = []

    def encode(ranges: Ranges) -> Expr:  # each class stands in the tree as a Ref to its index
        classes.append(ranges)
        return Ref(str(len(classes) - 1))

    return _print(regex_expr(pattern, search=search, encode=encode), classes)


def _print(e: Expr, classes: list[Ranges]) -> str:
    """The regex text of an expression tree whose leaves are class Refs."""
    if isinstance(e, Ref):
        return rust_class(classes[int(e.name)])
    if isinstance(e, Seq):
        return "".join(_print(it, classes) for it in e.items)
    if isinstance(e, Alt):
        return "(?:" + "|".join(_print(it, classes) for it in e.items) + ")" if e.items \
            else NOTHING
    if isinstance(e, Repeat):
        hi = "" if e.hi is None else str(e.hi)
        return f"(?:{_print(e.item, classes)}){{{e.lo},{hi}}}"
    raise TypeError(f"a regex expression has no {type(e).__name__} node")  # Bytes: never here


def rust_class(ranges: Ranges) -> str:
    """A set of code points as a Rust class (surrogates left out: they are not characters)."""
    parts = [f"\\x{{{lo:x}}}" + (f"-\\x{{{hi:x}}}" if hi > lo else "")
             for lo, hi in normalize(ranges)]
    return "[" + "".join(parts) + "]" if parts else NOTHING


def not_in_regex(names: list[str]) -> str:
    """The strings that are none of `names`, as a full-match Rust regex: below each node of the
    names' trie, stop where no name ends, or take a child, or leave the trie.

    >>> import re  # the same regex in Python's syntax, to try it
    >>> py = re.sub(r"\\\\x\\{(\\w+)\\}", lambda m: f"\\\\U{int(m[1], 16):08x}", not_in_regex(["ab", "a"]))
    >>> [bool(re.fullmatch(py, s)) for s in ("a", "ab", "abc", "b", "", "é")]
    [False, False, True, True, True, True]
    """
    trie = code_point_trie(names)
    anything = rust_class([(0, MAX_CODE_POINT)]) + "*"

    def below(node: dict) -> str:
        kids = [c for c in node if c is not None]
        parts = [] if None in node else [""]
        parts += [rust_class([(c, c)]) + below(node[c]) for c in kids]
        parts.append(rust_class(complement([(c, c) for c in kids])) + anything)
        return "(?:" + "|".join(parts) + ")"
    return below(trie)
