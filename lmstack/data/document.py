"""A document: the unit of text every data stage works on (filtering, dedup, the split).

Its own module so that the readers of sources.py and the generators of synthetic.py can both
yield it without importing each other.

    >>> Document("print(1)\\n", "stdlib:this.py").source
    'stdlib:this.py'
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Document:
    """One unit of text and a human-readable note of where it came from."""

    text: str
    source: str
