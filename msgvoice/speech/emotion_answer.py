"""Reading an LLM's emotion answer, and the JSON schema that asks for exactly that answer.

Answers come in many shapes: structured output (`{"vectors": [[8 numbers], ...]}`), or prose
with code fences, `vector`/`vectors` keys, numbers as strings; reasoning models put a
`<think>...</think>` block first. All are read; what cannot be read, or has a value outside
the schema's [0, 1], is a ValueError.
"""

from __future__ import annotations

import json
import re
from typing import Any

from msgvoice.llm import without_thinking
from msgvoice.speech.emotion import NAMES, Vector, safe

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S)


def schema(count: int) -> dict[str, Any]:
    """The JSON schema of exactly `count` vectors of 8 numbers in [0, 1]."""
    vector = {
        "type": "array",
        "items": {"type": "number", "minimum": 0, "maximum": 1},
        "minItems": len(NAMES),
        "maxItems": len(NAMES),
    }
    return {
        "type": "object",
        "properties": {
            "vectors": {"type": "array", "items": vector, "minItems": count, "maxItems": count}
        },
        "required": ["vectors"],
        "additionalProperties": False,
    }


class OutOfRange(ValueError):
    """A value the schema does not allow: the whole answer is void, not just that vector."""


def _number(x: Any) -> float:
    """One value as the schema has it, a number in [0, 1]; anything else (a boolean, NaN,
    infinity, -3) means the answer is not one, and the lexicon speaks for that message."""
    if isinstance(x, bool):
        raise ValueError("a boolean is not an emotion value")
    value = float(x)
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise OutOfRange(f"an emotion value outside [0, 1]: {x!r:.20}")
    return value


def _as_vector(item: Any) -> Vector:
    if isinstance(item, dict):
        item = item.get("vector", [item.get(n, 0) for n in NAMES])
    if not isinstance(item, list) or len(item) != len(NAMES):
        raise ValueError(f"expected {len(NAMES)} numbers, got {item!r:.80}")
    return safe([_number(x) for x in item])


def parse_vectors(content: str, count: int) -> list[Vector]:
    """Vectors from a model's answer: code fences, prose around the JSON, `vector`/`vectors`
    keys, numbers as strings, reasoning first; too few vectors are padded with the last, too
    many cut."""
    content = without_thinking(content)
    fenced = _FENCE.search(content)
    candidates = [fenced.group(1)] if fenced else []
    candidates += [content[i:] for i, ch in enumerate(content) if ch in "[{"]
    decoder = json.JSONDecoder()
    for candidate in candidates:
        try:
            data, _ = decoder.raw_decode(candidate.strip())
        except ValueError:
            continue
        try:
            vectors = _vectors_of(data)
        except OutOfRange:
            raise  # a vector further in would be part of the same void answer
        except (ValueError, TypeError):
            continue
        if vectors:
            return (vectors + [vectors[-1]] * count)[:count]
    raise ValueError(f"no emotion vectors in the answer: {content[:120]!r}")


def _vectors_of(data: Any) -> list[Vector]:
    if isinstance(data, dict):
        if "vectors" in data:
            return [_as_vector(v) for v in data["vectors"]]
        return [_as_vector(data.get("vector", data))]
    if isinstance(data, list) and data and all(isinstance(v, list | dict) for v in data):
        return [_as_vector(v) for v in data]
    return [_as_vector(data)]
