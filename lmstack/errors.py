"""One exception family for lmstack.

Every error a user can cause (bad file, bad flag, bad data) is raised as a subclass of
`LMStackError` at the boundary where the bad input enters, with a message that says what was
wrong and how to fix it. The CLI catches `LMStackError`, prints the message without a
traceback and exits with status 2.
"""

from __future__ import annotations


class LMStackError(Exception):
    """Base class of every error lmstack raises on purpose."""


class ConfigError(LMStackError, ValueError):
    """A configuration value or command-line flag is invalid."""


class DataError(LMStackError, ValueError):
    """A corpus, data file or token shard is missing, empty or malformed."""


class TokenizerError(LMStackError, ValueError):
    """A tokenizer file is corrupt or foreign, or text cannot be encoded as asked."""


class SpecialTokenError(TokenizerError):
    """Text spells a special token that the caller did not allow."""
