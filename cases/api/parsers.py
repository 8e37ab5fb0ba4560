"""A JSON parser that refuses deeply nested bodies before decoding them.

Python's `json` decoder recurses once per nesting level, so `[` repeated 100,000 times raises
RecursionError (a 500) instead of a parse error. The depth is measured here with a flat scan of
the text, so a hostile body costs one linear pass and never reaches the decoder.
"""

from __future__ import annotations

import io
import re

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

# A JSON string (escapes included; an unterminated one runs to the end of the text) or one
# bracket. Strings are matched whole so that brackets inside them are not counted.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[{]|[\]}]', re.DOTALL)


def json_nesting_depth_exceeds(text: str, *, limit: int) -> bool:
    """Whether any array or object in `text` is nested deeper than `limit` levels.

    Works on any text (valid JSON or not) without recursion; brackets inside strings are
    ignored.
    """
    depth = 0
    for match in _TOKEN.finditer(text):
        char = match.group()[0]
        if char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth = max(depth - 1, 0)
    return False


def json_max_depth() -> int:
    return settings.ILDREVIEW_MAX_JSON_DEPTH


class DepthLimitedJSONParser(JSONParser):
    """DRF's JSON parser, refusing bodies nested deeper than ILDREVIEW_MAX_JSON_DEPTH (400)."""

    def parse(self, stream, media_type=None, parser_context=None):
        parser_context = parser_context or {}
        encoding = parser_context.get("encoding", settings.DEFAULT_CHARSET)
        raw = stream.read()
        try:
            text = raw.decode(encoding)
        except (UnicodeDecodeError, LookupError) as exc:
            raise ParseError(f"JSON parse error - the body is not valid {encoding}.") from exc
        limit = json_max_depth()
        if json_nesting_depth_exceeds(text, limit=limit):
            raise ParseError(f"JSON parse error - nested deeper than {limit} levels.")
        return super().parse(io.BytesIO(raw), media_type, parser_context)
