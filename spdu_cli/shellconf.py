"""Read the original daemon's shell-assignment files as data, never as code.

Understands what its users wrote: `key=value`, `key="value"`, `key='value'`,
comments, a `#!` line, `$key` / `${key}` references, backslash escapes and
line continuations. Anything that would make a shell run something is refused.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Mapping

_OPERATORS = ";&|<>()"
_BLANK = " \t\r"
_FIRST = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_REST = _FIRST | frozenset("0123456789")


def _name_end(text: str, pos: int) -> int:
    """The end of the name ([A-Za-z_][A-Za-z0-9_]*) at `pos`; `pos` when there is none."""
    if pos >= len(text) or text[pos] not in _FIRST:
        return pos
    end = pos + 1
    while end < len(text) and text[end] in _REST:
        end += 1
    return end


# A tuple, not a dataclass: spdu-cron's first step reads the configuration
# with this module alone, before anything heavier is imported.
Assignment = namedtuple("Assignment", "key value line")  # noqa: PYI024 - typing costs the copy


class ShellSyntaxError(ValueError):
    """A line is not a plain assignment; carries the line number and a hint."""

    def __init__(self, line: int, message: str, hint: str):
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message
        self.hint = hint


Lookup = Callable[[str, int, Mapping[str, str]], str]
"""(name, line, values set so far in this file) -> the value of a key this
file has not set, or raises ShellSyntaxError."""


def parse(text: str, lookup: Lookup, secret_keys: frozenset[str] = frozenset()) -> list[Assignment]:
    """Parse a whole file; references see earlier lines, then `lookup`. An
    error in the value of a key in `secret_keys` never repeats any of it."""
    return _Parser(text, lookup, secret_keys).run()


class _Parser:
    def __init__(self, text: str, lookup: Lookup, secret_keys: frozenset[str] = frozenset()):
        self.secret_keys = secret_keys
        self.text = text
        self.pos = 0
        self.line = 1
        self.lookup = lookup
        self.seen: dict[str, str] = {}

    # -- helpers -----------------------------------------------------------
    def peek(self, offset: int = 0) -> str:
        i = self.pos + offset
        return self.text[i] if i < len(self.text) else ""

    def advance(self) -> str:
        ch = self.text[self.pos]
        self.pos += 1
        if ch == "\n":
            self.line += 1
        return ch

    def fail(self, message: str, hint: str, line: int | None = None) -> ShellSyntaxError:
        return ShellSyntaxError(line or self.line, message, hint)

    def skip_blanks(self) -> None:
        while self.peek() and self.peek() in _BLANK:
            self.advance()

    def skip_comment(self) -> None:
        while self.peek() and self.peek() != "\n":
            self.advance()

    def rest_of_line(self) -> str:
        end = self.text.find("\n", self.pos)
        return self.text[self.pos : end if end >= 0 else len(self.text)].strip()

    # -- grammar -----------------------------------------------------------
    def run(self) -> list[Assignment]:
        out: list[Assignment] = []
        while True:
            self.skip_blanks()
            ch = self.peek()
            if not ch:
                return out
            if ch == "\n":
                self.advance()
            elif ch == "#":
                self.skip_comment()
            elif ch == "\\" and self.peek(1) == "\n":
                self.advance()
                self.advance()
            else:
                out.append(self.assignment())

    def assignment(self) -> Assignment:
        line = self.line
        end = _name_end(self.text, self.pos)
        key = self.text[self.pos : end]
        if not key or self.text[end : end + 1] != "=":
            raise self.not_an_assignment(key)
        if key in self.secret_keys:
            try:
                return self.value_of(key, line, end)
            except ShellSyntaxError as e:
                raise self.fail(
                    f"{key}: the value cannot be read as plain data (not shown: it is a secret)",
                    f"put it in single quotes, {key}='...', where $, spaces and \" are literal",
                    e.line,
                ) from None
        return self.value_of(key, line, end)

    def value_of(self, key: str, line: int, end: int) -> Assignment:
        self.pos = end + 1
        value = self.word(key)
        self.skip_blanks()
        ch = self.peek()
        if ch == "#":
            self.skip_comment()
        elif ch and ch != "\n":
            if ch in _OPERATORS:
                raise self.fail(
                    f"{key}: shell operator {ch!r} after the value",
                    "spdu reads one key=value per line and runs nothing",
                )
            raise self.fail(
                f"{key}: unquoted space in the value",
                f'quote the whole value: {key}="{value} {self.rest_of_line()}"',
            )
        self.seen[key] = value
        return Assignment(key, value, line)

    def not_an_assignment(self, first_word: str) -> ShellSyntaxError:
        text = self.rest_of_line()
        if first_word in ("export", "readonly", "local", "declare", "typeset"):
            hint = f"drop {first_word!r}: write key=value"
        elif first_word in (".", "source") or text.startswith((". ", "source ")):
            hint = "spdu does not include other files; copy the settings here"
        elif first_word and self.text[self.pos + len(first_word) :].lstrip(_BLANK)[:1] == "=":
            hint = "no spaces around '=': write key=value"
        else:
            hint = "spdu reads key=value lines only and never runs commands"
        return self.fail(f"not an assignment: {text!r}", hint)

    def word(self, key: str) -> str:
        """Read one shell word: unquoted, '...' and "..." parts, concatenated."""
        parts: list[str] = []
        start = True
        while True:
            ch = self.peek()
            if not ch or ch in _BLANK or ch == "\n":
                return "".join(parts)
            if ch == "'":
                parts.append(self.single_quoted(key))
            elif ch == '"':
                parts.append(self.double_quoted(key))
            elif ch == "\\":
                self.advance()
                nxt = self.peek()
                if nxt == "\n":
                    self.advance()  # line continuation
                elif nxt:
                    parts.append(self.advance())
            elif ch == "$":
                parts.append(self.expansion(key))
            elif ch == "`":
                raise self.command_substitution(key)
            elif ch in _OPERATORS:
                raise self.fail(
                    f"{key}: shell operator {ch!r} in the value",
                    f"quote the value if {ch!r} is meant literally: {key}='...'",
                )
            elif ch == "~" and start:
                raise self.fail(
                    f"{key}: '~' would be expanded by a shell",
                    "write the full path, or quote it if '~' is meant literally",
                )
            else:
                parts.append(self.advance())
            start = False

    def single_quoted(self, key: str) -> str:
        line = self.line
        self.advance()
        end = self.text.find("'", self.pos)
        if end < 0:
            raise self.fail(f"{key}: unterminated single quote", "close the quote", line)
        value = self.text[self.pos : end]
        while self.pos <= end:
            self.advance()
        return value

    def double_quoted(self, key: str) -> str:
        line = self.line
        self.advance()
        parts: list[str] = []
        while True:
            ch = self.peek()
            if not ch:
                raise self.fail(f"{key}: unterminated double quote", "close the quote", line)
            if ch == '"':
                self.advance()
                return "".join(parts)
            if ch == "\\":
                self.advance()
                nxt = self.peek()
                if nxt == "\n":
                    self.advance()
                elif nxt in ('"', "\\", "$", "`"):
                    parts.append(self.advance())
                else:
                    parts.append("\\")
            elif ch == "$":
                parts.append(self.expansion(key))
            elif ch == "`":
                raise self.command_substitution(key)
            else:
                parts.append(self.advance())

    def command_substitution(self, key: str) -> ShellSyntaxError:
        return self.fail(
            f"{key}: command substitution is not allowed",
            "spdu never runs commands from its configuration; write the value itself",
        )

    def expansion(self, key: str) -> str:
        self.advance()  # the '$'
        ch = self.peek()
        if ch == "(":
            raise self.command_substitution(key)
        if ch == "{":
            close = self.text.find("}", self.pos)
            inner = self.text[self.pos + 1 : close] if close >= 0 else ""
            if close < 0 or not inner or _name_end(inner, 0) != len(inner):
                raise self.fail(
                    f"{key}: unsupported expansion ${{{inner or '...'}}}",
                    "only ${key} and $key references to keys set earlier are understood",
                )
            while self.pos <= close:
                self.advance()
            return self.reference(key, inner)
        end = _name_end(self.text, self.pos)
        if end > self.pos:
            name, self.pos = self.text[self.pos : end], end
            return self.reference(key, name)
        if ch and (ch.isdigit() or ch in "@*#?$!-"):
            raise self.fail(
                f"{key}: shell parameter ${ch} is not allowed",
                f"to write a literal '$', use single quotes: {key}='...$...'",
            )
        return "$"  # a lone '$' is literal in the shell too

    def reference(self, key: str, name: str) -> str:
        if name in self.seen:
            return self.seen[name]
        return self.lookup(name, self.line, self.seen)
