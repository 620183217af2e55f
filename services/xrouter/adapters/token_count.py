"""Token counts for billing when a backend reports none: the model's real tokenizer where the catalog
names one (its ``tokenizer`` field), otherwise a character estimate that is always marked estimated.

A tokenizer reference is a local file, never a model hub name (serving must not reach the network):
an absolute path, or ``package:<module>/<path inside it>`` for one an installed Python package ships.
The file is a ``tokenizers`` serialization (``tokenizer.json``) or a GGUF model file, whose embedded
tokenizer is rebuilt with transformers' GGUF reader (about a second, once per process). Loaded
tokenizers are cached per reference, so counting costs one ``encode``.

Counts cover the messages' text only: the chat template's framing tokens (a few per message) are not
in a tokenizer file, so a model whose backend reports usage is always billed from that instead.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import pathlib
from collections.abc import Sequence
from typing import Any

__all__ = ["ESTIMATE", "TokenCounter", "TokenizerError", "counter_for", "estimate_tokens", "load_tokenizer"]

PACKAGE_PREFIX = "package:"


class TokenizerError(ValueError):
    """A tokenizer reference that names no usable tokenizer; the message says why."""


def estimate_tokens(text: str) -> int:
    """Rough token count (about four characters a token for English), for models without a tokenizer."""
    return max(1, (len(text) + 3) // 4) if text else 0


@dataclasses.dataclass(frozen=True)
class TokenCounter:
    """Counts text in one model's tokens; ``exact`` is False when the counts are estimates."""

    tokenizer: Any = None  # a tokenizers.Tokenizer, or None: estimate

    @property
    def exact(self) -> bool:
        return self.tokenizer is not None

    def text(self, text: str) -> int:
        """Tokens in ``text`` (special tokens such as BOS are the template's, not the text's)."""
        if self.tokenizer is None:
            return estimate_tokens(text)
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids) if text else 0

    def messages(self, messages: Sequence[tuple[str, str]]) -> int:
        """Tokens in the messages' contents (roles and template framing are not counted)."""
        return sum(self.text(content) for _, content in messages)

    def truncate(self, text: str, max_tokens: int) -> str:
        """The longest prefix of ``text`` that is at most ``max_tokens`` tokens long."""
        if self.tokenizer is None:
            return text[: max_tokens * 4]  # the inverse of the estimate
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        if len(encoding.ids) <= max_tokens:
            return text
        return text[: encoding.offsets[max_tokens][0]]


ESTIMATE = TokenCounter()


def counter_for(tokenizer: str) -> TokenCounter:
    """The counter for a catalog entry's ``tokenizer`` reference ("" → the marked estimate)."""
    return TokenCounter(load_tokenizer(tokenizer)) if tokenizer else ESTIMATE


@functools.cache
def load_tokenizer(reference: str) -> Any:
    """Load (once per process) the tokenizer a reference names; raises :class:`TokenizerError`."""
    path = _resolve(reference)
    if path.suffix == ".gguf":
        tokenizer = _from_gguf(path)
    else:
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises a bare Exception for an unreadable file; re-raised named
            raise TokenizerError(f"{path} is not a tokenizers file (tokenizer.json): {error}") from None
    # An encoder's file may pad or cut every text to a fixed length: a count wants neither.
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def _resolve(reference: str) -> pathlib.Path:
    if reference.startswith(PACKAGE_PREFIX):
        package, _, inside = reference.removeprefix(PACKAGE_PREFIX).partition("/")
        try:
            found = importlib.util.find_spec(package) if package.isidentifier() else None
        except ImportError:
            found = None
        if found is None or found.origin is None:
            raise TokenizerError(f"{reference!r}: package {package!r} is not installed")
        if not inside:
            raise TokenizerError(f"{reference!r}: name the file inside the package: package:{package}/<path>")
        path = pathlib.Path(found.origin).parent / inside
    else:
        path = pathlib.Path(reference)
        if not path.is_absolute():
            raise TokenizerError(f"{reference!r}: give an absolute path or package:<module>/<path> "
                                 "(a relative path would depend on the working directory)")
    if not path.is_file():
        raise TokenizerError(f"{reference!r}: no such file ({path})")
    return path


def _from_gguf(path: pathlib.Path) -> Any:
    from transformers.integrations.gguf import convert_gguf_tokenizer, get_gguf_tokenizer

    try:
        architecture, vocabulary, _ = get_gguf_tokenizer(str(path))
        tokenizer, _ = convert_gguf_tokenizer(architecture, vocabulary)
    except (ValueError, KeyError, OSError) as error:
        raise TokenizerError(f"{path}: no tokenizer could be read from this GGUF file: {error}") from None
    return tokenizer
