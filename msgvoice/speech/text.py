"""Text normalisation and sentence segmentation for Chinese, English and mixed text (pure)."""

from __future__ import annotations

import re

_SENTENCE_END = "。！？；!?;"
_CLAUSE_END = "，、,：:"
_CLOSERS = "”’\"')）」』】》"

_SPACES = re.compile(r"[ \t\u3000\u00a0]+")
_BLANK_LINES = re.compile(r"\n\s*\n+")
_ELLIPSIS = re.compile(r"(?:\.{3,}|…+|。{3,})")
_REPEATED = re.compile(r"([。！？；，、!?;,~～])\1+")
_MIXED_END = re.compile(r"[!?！？]{2,}")
_SPACE_NEAR_CJK = re.compile(
    r"(?<=[\u3000-\u9fff\uff00-\uffef]) | (?=[\u3000-\u9fff\uff00-\uffef])"
)
# An English full stop ends a sentence when followed by space or the end (not in "3.14").
_SENTENCE = re.compile(
    rf"[^{_SENTENCE_END}\n]*?(?:[{_SENTENCE_END}]+[{_CLOSERS}]*|\.(?=\s|$)[{_CLOSERS}]*|\n|$)"
)

TINY_SEGMENT_CHARS = 8
"""A final piece shorter than this is merged into its neighbour."""
_SAYABLE = re.compile(r"[^\W_]")
"""A letter or a digit, in any script."""
LEAD_MIN_CHARS = 4
"""An opening clause shorter than this ("嗯，", "Well,") is spoken with what follows it."""
_LEAD_END = re.compile(rf"(?:[，、：。！？；…]|[,:;.!?](?=\s))+[{_CLOSERS}]*|\n")
"""Where an opening clause may end: CJK punctuation, or Latin punctuation before a space (so
"1,000" and "3.14" stay whole)."""


def speakable(text: str) -> bool:
    """Whether text holds anything an engine can say: a letter or a digit in any script, not
    only emoji, punctuation, symbols or invisible characters (`😀😀`, `。。`, `\u200b`)."""
    return _SAYABLE.search(text) is not None


def normalise(text: str) -> str:
    """Tidy chat text for speech: newlines, repeated punctuation, ellipses, stray spaces."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _ELLIPSIS.sub("…", text)
    text = _MIXED_END.sub(lambda m: m.group()[-1], text)
    text = _REPEATED.sub(r"\1", text)
    lines = (_SPACES.sub(" ", line).strip() for line in _BLANK_LINES.sub("\n", text).split("\n"))
    text = "\n".join(line for line in lines if line)
    return _SPACE_NEAR_CJK.sub("", text)


def sentences(text: str) -> list[str]:
    """Split normalised text into sentences, each keeping its end punctuation."""
    return [s.strip() for s in _SENTENCE.findall(text) if s.strip()]


def lead(piece: str) -> tuple[str, str]:
    """(its opening clause, the rest) of a piece: up to its first comma, colon or sentence
    end, at least LEAD_MIN_CHARS long; (piece, "") when nothing speakable follows that."""
    for end in _LEAD_END.finditer(piece):
        head, rest = piece[: end.end()].strip(), piece[end.end() :].strip()
        if len(head) >= LEAD_MIN_CHARS:
            return (head, rest) if speakable(rest) else (piece, "")
    return piece, ""


def _cut(piece: str, budget: int) -> list[str]:
    """Cut one over-long sentence at commas, then spaces, then (CJK only) characters."""
    for pattern in (rf"(?<=[{_CLAUSE_END}])", r"(?<=\s)"):
        parts = [p for p in re.split(pattern, piece) if p.strip()]
        if len(parts) > 1:
            return _pack(parts, budget)
    if " " in piece.strip() or not re.search(r"[\u3000-\u9fff]", piece):
        return [piece]  # a single long Latin word: never cut mid-word
    return [piece[i : i + budget] for i in range(0, len(piece), budget)]


def _pack(parts: list[str], budget: int) -> list[str]:
    """Greedily pack parts into chunks of at most `budget` characters (cutting any larger part)."""
    chunks: list[str] = []
    current = ""
    for part in parts:
        pieces = _cut(part, budget) if len(part.strip()) > budget else [part]
        for piece in pieces:
            if current and len(current) + len(piece) > budget:
                chunks.append(current.strip())
                current = ""
            current = _join(current, piece) if current else piece
    if current.strip():
        chunks.append(current.strip())
    return chunks


def _joins_tight(left: str, right: str) -> bool:
    """Whether two pieces join without a space (CJK on either side)."""
    return bool(re.search(r"[\u3000-\u9fff\uff00-\uffef\s]$", left)) or bool(
        re.match(r"[\u3000-\u9fff\uff00-\uffef\s]", right)
    )


def _join(left: str, right: str) -> str:
    return left + right if _joins_tight(left, right) else f"{left} {right}"


def segment(text: str, budget: int) -> list[str]:
    """Split text into segments of at most `budget` characters at sentence ends; sentences
    with nothing `speakable` are left out (none at all: no segment).

    `budget` 0 keeps the whole text as one segment. Over-long sentences are cut at commas and
    never mid-word; a tiny last piece is merged into the one before it.
    """
    text = normalise(text)
    if not speakable(text):
        return []
    if budget <= 0:
        return [text.replace("\n", " ")]
    chunks = _pack([s for s in sentences(text) if speakable(s)], budget)
    if len(chunks) > 1 and len(chunks[-1]) < TINY_SEGMENT_CHARS:
        tail = chunks.pop()
        chunks[-1] = _join(chunks[-1], tail)
    return chunks


def truncate(text: str, max_chars: int) -> str:
    """Cut text to at most `max_chars` at a sentence boundary (for automatic replies)."""
    text = normalise(text)
    if len(text) <= max_chars:
        return text
    kept = ""
    for sentence in sentences(text):
        joined = sentence if not kept else _join(kept, sentence)
        if len(joined) > max_chars:
            break
        kept = joined
    return kept or _pack([text], max_chars)[0]
