"""Optional: msgvoice answers ordinary messages itself with an OpenAI-compatible chat model.

Each answer sees the chat's conversation so far (journalled by `asks`), is bounded in time
(`timeout_s`) and in length (`max_tokens`), and has a reasoning model's `<think>` blocks
removed. Failures are told apart as the emotion analyser tells them (msgvoice/llm.py): a refused
key, model or request is said once with its fix; a server that does not answer, each time.
"""

from __future__ import annotations

import asyncio
import logging

import httpx

from msgvoice.chat.asks import Turn
from msgvoice.config import ResponderConfig
from msgvoice.llm import Refused, ServerDown, complete, content_of, without_thinking
from msgvoice.net import base_url

log = logging.getLogger(__name__)

FIXES = {
    "auth": "set responder.api_key to the key the server wants",
    "model": "set responder.model to a model the server has",
    "unloaded": "load responder.model in the server (LM Studio with JIT off loads none itself)",
    "format": "the server refused the request's form: see its log",
    "request": "the server refused the request: see its log",
}


class Responder:
    """Asks a chat model for a reply; any failure is logged and yields no reply."""

    def __init__(self, config: ResponderConfig, client: httpx.AsyncClient) -> None:
        self.config = config
        self.client = client
        self.url = base_url(config.base_url) + "/v1/chat/completions"
        self._said: set[str] = set()

    async def answer(self, chat_id: str, text: str, history: list[Turn]) -> str | None:
        """The model's answer to `text` after `history`, or None."""
        body = {
            "model": self.config.model,
            "max_tokens": self.config.max_tokens,  # a rambling model stops here, not at its context
            "messages": [
                {"role": "system", "content": self.config.system_prompt},
                *history,
                {"role": "user", "content": text},
            ],
        }
        try:
            async with asyncio.timeout(self.config.timeout_s):
                choice = await complete(self.client, self.url, body, self.config.api_key)
        except Refused as exc:
            level = logging.INFO if str(exc) in self._said else logging.WARNING
            self._said.add(str(exc))
            log.log(level, "responder refused for chat=%s: %s; %s", chat_id, exc, FIXES[exc.about])
            return None
        except (TimeoutError, ServerDown, ValueError) as exc:
            why = str(exc) or f"no answer within {self.config.timeout_s:g} s"
            log.warning("responder failed for chat=%s: %s", chat_id, why)
            return None
        answer = without_thinking(content_of(choice))
        if not answer and choice.get("finish_reason") == "length":
            log.warning(
                "responder for chat=%s: the answer was cut off at max_tokens (%d) while the "
                "model was still thinking; raise responder.max_tokens",
                chat_id,
                self.config.max_tokens,
            )
        return answer or None
