"""Stop strings that may span token boundaries, and never leak into returned or streamed text.

A stop string is matched in the decoded text, not in token ids: "\\n\\nUser:" may arrive as
"\\n", "\\nUser" and ":" or in any other split. So the engine keeps each row's generated text and
asks two questions after every token:

- `find_stop(text, stops)`: has a stop string appeared? Then the text ends where the earliest
  one begins, and generation of that row stops (finish reason "stop").
- `safe_length(text, stops)`: how much of the text can be streamed now? Everything except the
  longest tail that is still the beginning of some stop string: "...\\n\\nUs" is held back
  until the next token shows whether it becomes "\\n\\nUser:" or not.

Together they guarantee a streamed text equals the returned text, and neither contains any part
of a stop string that matched. Run the doctests: `pytest lmstack/infer/stopping.py`.
"""

from __future__ import annotations

from collections.abc import Sequence


def find_stop(text: str, stops: Sequence[str], start: int = 0) -> int | None:
    """Index where the earliest stop string begins in text[start:] onwards, or None.

    `start` lets the caller skip text already searched (keep it at most len(text) minus the
    longest stop string's length, so a stop straddling the old end is still found).

    >>> find_stop("Hello\\nUser: hi", ["User:", "\\n"])
    5
    >>> find_stop("no stop here", ["###"]) is None
    True
    """
    found = [i for i in (text.find(s, start) for s in stops if s) if i >= 0]
    return min(found) if found else None


def safe_length(text: str, stops: Sequence[str]) -> int:
    """How many leading characters of `text` cannot be part of a stop string still forming.

    >>> safe_length("Hello\\nUs", ["\\nUser:"])   # "\\nUs" may become "\\nUser:": hold it back
    5
    >>> safe_length("Hello", ["\\nUser:"])
    5
    >>> safe_length("ab", ["b", "bc"])            # a complete stop is find_stop's business
    1
    """
    hold = 0
    for s in stops:
        # The longest proper prefix of s that the text ends with.
        for n in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:n]):
                hold = n
                break
    if any(s and text.endswith(s) for s in stops):
        hold = max(hold, max(len(s) for s in stops if s and text.endswith(s)))
    return len(text) - hold


def check_stops(stops: Sequence[str] | str | None) -> list[str]:
    """Normalize the `stop` setting to a list of non-empty strings (OpenAI allows one string).

    >>> check_stops("###"), check_stops(None)
    (['###'], [])
    >>> check_stops([""])
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: stop strings must be non-empty, got ['']; remove the empty one
    """
    from lmstack.errors import ConfigError

    if stops is None:
        return []
    if isinstance(stops, str):
        stops = [stops]
    stops = list(stops)
    if not all(isinstance(s, str) for s in stops):
        raise ConfigError(f"stop must be a string or a list of strings, got {stops!r}")
    if any(s == "" for s in stops):
        raise ConfigError(f"stop strings must be non-empty, got {stops!r}; remove the empty one")
    return stops
