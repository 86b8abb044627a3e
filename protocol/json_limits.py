"""Bounds on a JSON text, checked in one linear pass BEFORE it is parsed.

Python's ``json`` recurses per nesting level (5000 ``[`` raise
``RecursionError``) and converts digits to ``int`` in quadratic time (a
5000-digit number raises ``ValueError`` past ``sys.get_int_max_str_digits``),
so a hostile header must be refused before ``json.loads`` sees it. Nothing
here allocates per element: strings are skipped by a regular expression
without backtracking, then brackets, numbers and separators are counted on
what is left.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ftlct.protocol.errors import ProtocolError

# "..." with escapes, unrolled so that the engine never backtracks
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NUMBER = re.compile(rb"[-+0-9.eE]+")
_BRACKETS = re.compile(rb"[\[\]{}]")


@dataclass(frozen=True)
class JsonLimits:
    max_depth: int = 16  # the deepest real header (a twin's feature_stats blocks) is 5
    max_number_chars: int = 32  # repr of a float64 is at most 24 characters
    max_string_bytes: int = 4096  # names, versions, hashes, signatures: < 200
    max_elements: int = 65_536  # values in all arrays and objects together


def check_json_limits(text: bytes, limits: JsonLimits = JsonLimits()) -> None:
    """``ProtocolError('header_limits')`` if ``text`` is nested, long or large beyond ``limits``."""
    if len(text) - 2 > limits.max_string_bytes:  # else no string in it can be that long
        longest = max(map(len, _STRING.findall(text)), default=2) - 2
        if longest > limits.max_string_bytes:
            _fail(f"a string of {longest} bytes (limit {limits.max_string_bytes})")
    skeleton = _STRING.sub(b'""', text)
    if b'"' in skeleton.replace(b'""', b""):
        # an unterminated string: not JSON, and what follows it was not scanned
        raise ProtocolError("malformed", "header has an unterminated string")
    elements = skeleton.count(b",") + skeleton.count(b"[") + skeleton.count(b"{")
    if elements > limits.max_elements:
        _fail(f"about {elements} elements (limit {limits.max_elements})")
    depth = 0
    for match in _BRACKETS.finditer(skeleton):
        if match.group() in b"[{":
            depth += 1
            if depth > limits.max_depth:
                _fail(f"nested deeper than {limits.max_depth} levels")
        else:
            depth -= 1
    longest = max(map(len, _NUMBER.findall(skeleton)), default=0)
    if longest > limits.max_number_chars:
        _fail(f"a number of {longest} characters (limit {limits.max_number_chars})")


def _fail(what: str) -> None:
    raise ProtocolError("header_limits", f"header refused before parsing: {what}")
