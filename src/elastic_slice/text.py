"""Untrusted text on the terminal: shown literally, with control and direction characters escaped visibly.

Names, paths and messages come from files the user did not write. Everything the CLI prints goes through here:
`literal` escapes what a terminal would act on (C0/C1 controls such as ESC, CR, backspace and NUL, DEL, Unicode
direction overrides and isolates, line separators, lone surrogates) as Python escapes (`\\x1b`, `\\r`, `\\u202e`), and
`styled` builds Rich `Text`, which Rich never parses for markup (`[/bold]` stays text) or emoji codes.
"""

from __future__ import annotations

import re

from rich.console import Console
from rich.text import Text

#: C0 controls, DEL and C1 controls; bidi embeddings/overrides (U+202A-202E), isolates (U+2066-2069), marks
#: (U+200E, U+200F, U+061C); line/paragraph separators (U+2028, U+2029); lone surrogates
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")

#: a piece of a printed line: untrusted text (shown literally), or (fixed text, Rich style) for labels
Part = str | tuple[str, str]


_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def literal(value: object) -> str:
    """`str(value)` with every character a terminal would act on replaced by its visible escape."""
    return _UNSAFE.sub(_escape, str(value))


def styled(*parts: Part) -> Text:
    """Rich Text from untrusted pieces (escaped by `literal`) and styled labels; never parsed as markup."""
    text = Text()
    for part in parts:
        if isinstance(part, tuple):
            text.append(literal(part[0]), style=part[1])
        else:
            text.append(literal(part))
    return text


def say(console: Console, *parts: Part) -> None:
    """Print one line of `styled` parts, without Rich's highlighting."""
    console.print(styled(*parts), highlight=False)
