"""A query language for prompt programs in files, with LMQL's shape (Beurer-Kellner et al.,
"Prompting Is Programming", PLDI 2023), parsed with a Lark grammar and compiled to the
Python API (holes.py, state.py):

    sample(n=2, temperature=0.8)           # decoder: argmax | sample(n, temperature, seed) | beam(n)
    "Q: {question}\\n"                      # prompt: string literals; {python} is evaluated,
    "A: [ANSWER]\\n"                        # [NAME] is a hole ([[ and {{ write [ and {)
    "Verdict: [VERDICT]"
    from "smollm2"                         # optional: the model
    where len(TOKENS(ANSWER)) < 20 and STOPS_AT(ANSWER, "\\n") and VERDICT in ["yes", "no"]

`where` atoms: `len(TOKENS(X)) < n` (or <=): max_tokens; `STOPS_AT(X, "s")`: a stop string
(not part of the value, as OpenAI's stop); `INT(X)`, `FLOAT(X)`: typed holes; `REGEX(X, r"...")`:
the hole matches it; `X in [...]`: a select hole (the options scored, not generated). `and`
joins atoms; `or` joins two `in` lists or two REGEXes of the same hole (union). Syntax errors and
bad holes name the line and column.

    >>> q = parse_query('argmax "2 + 2 = [N]" where INT(N) and len(TOKENS(N)) < 3')
    >>> q.decoder.kind, q.holes["N"].type, q.holes["N"].max_tokens
    ('argmax', <class 'int'>, 2)
    >>> parse_query('argmax "x [A]" where B in ["y"]')
    Traceback (most recent call last):
    ...
    lmstack.infer.program.query.QueryError: query:1:22: where names hole B, but the prompt has no [B] (holes: A)

Run the doctests: `pytest lmstack/infer/program/query.py`.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Any

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedInput

from lmstack.errors import ConfigError
from lmstack.infer.program.holes import Gen, Select, gen, select
from lmstack.infer.program.state import Decoder, ProgramState

GRAMMAR = r"""
start: decoder prompt from_clause? where_clause?
decoder: DECODER ("(" [arg ("," arg)*] ")")?
DECODER: "argmax" | "sample" | "beam"
arg: NAME "=" (NUMBER | STRING)
prompt: STRING+
from_clause: "from" STRING
where_clause: "where" disj
?disj: conj ("or" conj)*
?conj: atom ("and" atom)*
?atom: call | length | member | "(" disj ")"
call: NAME "(" NAME ("," STRING)? ")"
length: "len" "(" "TOKENS" "(" NAME ")" ")" LESS NUMBER
member: NAME "in" "[" STRING ("," STRING)* ","? "]"
LESS: "<=" | "<"
STRING: /[rR]?("{3}(.|\n)*?"{3}|'{3}(.|\n)*?'{3}|"(\\.|[^"\\\n])*"|'(\\.|[^'\\\n])*')/
NAME: /[A-Za-z_][A-Za-z0-9_]*/
NUMBER: /-?[0-9]+(\.[0-9]+)?/
COMMENT: /#[^\n]*/
%ignore /\s+/
%ignore COMMENT
"""
_PARSER = Lark(GRAMMAR, parser="lalr", propagate_positions=True)
PIECE = re.compile(r"\[\[|\]\]|\{\{|\}\}|\[([A-Za-z_][A-Za-z0-9_]*)\]|\{([^{}]+)\}")
CALLS = ("INT", "FLOAT", "STOPS_AT", "REGEX")


class QueryError(ConfigError):
    """A query that does not parse or does not make sense, with its line and column."""


@dataclass
class Query:
    """A parsed query: its decoder, prompt pieces (text, `("expr", code)`, `("hole", name)`),
    the model named in `from` (or None) and one hole per [NAME]."""

    decoder: Decoder
    pieces: list[Any]
    model: str | None
    holes: dict[str, Gen | Select] = field(default_factory=dict)

    def __call__(self, s: ProgramState, **args: Any) -> None:
        """The query as a program: append its pieces to `s`, {expressions} evaluated with the
        arguments and the holes filled so far in scope."""
        for piece in self.pieces:
            if isinstance(piece, str):
                s += piece
            elif piece[0] == "hole":
                s += self.holes[piece[1]]
            else:
                s += _evaluate(piece[1], {**args, **s.values}, s)


def _evaluate(code: str, scope: dict[str, Any], s: ProgramState) -> str:
    try:
        return str(eval(code, {"__builtins__": __builtins__}, scope))  # the query's own Python
    except Exception as e:  # noqa: BLE001 (any error of the user's expression)
        from lmstack.infer.program.state import ProgramError

        raise ProgramError(f"{{{code}}}: {type(e).__name__}: {e} (names in scope: "
                           f"{', '.join(sorted(scope)) or 'none'})", s) from None


def parse_query(text: str, source: str = "query") -> Query:
    """Parse and check a query; QueryError with `source:line:column` for any problem."""
    try:
        tree = _PARSER.parse(text)
    except UnexpectedInput as e:
        expected = sorted({_terminal(t) for t in getattr(e, "expected", None)
                           or getattr(e, "allowed", None) or []})
        hint = f"; expected {' or '.join(expected[:8])}" if expected else ""
        end = getattr(getattr(e, "token", None), "type", "") == "$END"
        what = "the query ends too early" if end else "syntax error"
        raise QueryError(f"{source}:{e.line}:{e.column}: {what}{hint}\n"
                         f"{e.get_context(text).rstrip()}") from None
    decoder_t, prompt_t, *rest = tree.children
    decoder = _decoder(decoder_t, source)
    pieces, names = _prompt(prompt_t, source)
    model = next((_string(c.children[0]) for c in rest if c.data == "from_clause"), None)
    specs: dict[str, dict[str, Any]] = {name: {} for name in names}
    for clause in rest:
        if clause.data == "where_clause":
            _constrain(clause.children[0], specs, source)
    holes = {name: _hole(name, spec) for name, spec in specs.items()}
    return Query(decoder, pieces, model, holes)


def _terminal(name: str) -> str:
    """A terminal as the user would write it: `(` for LPAR, a quoted keyword, or its name."""
    try:
        pattern = _PARSER.get_terminal(name).pattern
    except KeyError:
        return name
    return repr(pattern.value) if pattern.type == "str" else name


def _where(node: Tree | Token, source: str) -> str:
    meta = node if isinstance(node, Token) else node.meta
    return f"{source}:{meta.line}:{meta.column}"


def _string(tok: Token) -> str:
    return ast.literal_eval(str(tok))


def _decoder(node: Tree, source: str) -> Decoder:
    kind = str(node.children[0])
    options: dict[str, Any] = {}
    for arg in node.children[1:]:
        if arg is None:
            continue
        name, value = arg.children
        allowed = {"argmax": (), "sample": ("n", "temperature", "seed"), "beam": ("n",)}[kind]
        if str(name) not in allowed:
            raise QueryError(f"{_where(name, source)}: {kind} takes no argument {name!s}; it "
                             f"takes {', '.join(allowed) or 'none'}")
        options[str(name)] = ast.literal_eval(str(value))
    try:
        return Decoder(kind, **options)
    except ConfigError as e:
        raise QueryError(f"{_where(node, source)}: {e}") from None


def _prompt(node: Tree, source: str) -> tuple[list[Any], list[str]]:
    pieces: list[Any] = []
    names: list[str] = []
    for tok in node.children:
        text = _string(tok)
        at = 0
        for m in PIECE.finditer(text):
            pieces.append(text[at:m.start()])
            at = m.end()
            if m.group(1):
                if m.group(1) in names:
                    raise QueryError(f"{_where(tok, source)}: hole [{m.group(1)}] appears twice;"
                                     " give each hole its own name")
                names.append(m.group(1))
                pieces.append(("hole", m.group(1)))
            elif m.group(2):
                pieces.append(("expr", m.group(2)))
            else:
                pieces.append(m.group(0)[0])
        pieces.append(text[at:])
    return [p for p in pieces if p != ""], names


def _spec(name: Token, specs: dict[str, dict[str, Any]], source: str) -> dict[str, Any]:
    if str(name) not in specs:
        raise QueryError(f"{_where(name, source)}: where names hole {name!s}, but the prompt "
                         f"has no [{name!s}] (holes: {', '.join(specs) or 'none'})")
    return specs[str(name)]


def _set(spec: dict[str, Any], key: str, value: Any, node: Any, source: str) -> None:
    if key in spec and spec[key] != value:
        raise QueryError(f"{_where(node, source)}: a second {key} for the same hole; one "
                         f"hole takes one (merge them, e.g. a single REGEX)")
    spec[key] = value


def _constrain(node: Tree, specs: dict[str, dict[str, Any]], source: str) -> None:
    """Fold one where-clause node into the hole specs."""
    if node.data == "conj":
        for child in node.children:
            _constrain(child, specs, source)
    elif node.data == "disj":
        _union(node, specs, source)
    elif node.data == "length":
        name, less, number = node.children
        n = int(float(number)) - (str(less) == "<")
        if n < 1:
            raise QueryError(f"{_where(node, source)}: len(TOKENS({name})) {less} {number} leaves "
                             "no room for a single token")
        _set(_spec(name, specs, source), "max_tokens", n, node, source)
    elif node.data == "member":
        name, *options = node.children
        _set(_spec(name, specs, source), "options", [_string(o) for o in options], node, source)
    else:
        _call(node, specs, source)


def _call(node: Tree, specs: dict[str, dict[str, Any]], source: str) -> None:
    fn, name, *arg = node.children
    arg = [a for a in arg if a is not None]
    if str(fn) not in CALLS:
        raise QueryError(f"{_where(fn, source)}: unknown constraint {fn!s}(); this subset has "
                         f"{', '.join(CALLS)}, len(TOKENS(X)) < n and X in [...]")
    takes = str(fn) in ("STOPS_AT", "REGEX")
    if takes != bool(arg):
        raise QueryError(f"{_where(fn, source)}: {fn!s} takes "
                         f"{'a hole and a string' if takes else 'one hole'}")
    spec = _spec(name, specs, source)
    if str(fn) == "STOPS_AT":
        spec.setdefault("stop", []).append(_string(arg[0]))
    elif str(fn) == "REGEX":
        _set(spec, "regex", _string(arg[0]), node, source)
    else:
        _set(spec, "type", int if str(fn) == "INT" else float, node, source)


def _union(node: Tree, specs: dict[str, dict[str, Any]], source: str) -> None:
    """`or`: only two `in` lists, or two REGEXes, of one hole (their union)."""
    kinds = {(c.data, str(c.children[0]) if c.data == "call" else "") for c in node.children}
    holes = {str(c.children[1] if c.data == "call" else c.children[0]) for c in node.children}
    if len(holes) != 1 or kinds not in ({("member", "")}, {("call", "REGEX")}):
        raise QueryError(f"{_where(node, source)}: `or` is supported only between `in` lists or "
                         "REGEXes of one hole (a mask cannot express the rest); rewrite with and")
    spec = _spec(node.children[0].children[1 if node.children[0].data == "call" else 0],
                 specs, source)
    if ("member", "") in kinds:
        options = [_string(o) for c in node.children for o in c.children[1:]]
        _set(spec, "options", list(dict.fromkeys(options)), node, source)
    else:
        _set(spec, "regex", "|".join(f"(?:{_string(c.children[2])})" for c in node.children),
             node, source)


def _hole(name: str, spec: dict[str, Any]) -> Gen | Select:
    if "options" in spec:
        extra = sorted(set(spec) - {"options"})
        if extra:
            raise QueryError(f"hole {name}: `in [...]` makes it a select; it takes no "
                             f"{', '.join(extra)}")
        return select(name, spec["options"])
    return gen(name, spec.get("max_tokens", 64), spec.get("stop"), regex=spec.get("regex"),
               type=spec.get("type"))
