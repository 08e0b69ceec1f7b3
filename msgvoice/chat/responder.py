"""Optional: msgvoice answers ordinary messages itself with an OpenAI-compatible chat model."""

from __future__ import annotations

import logging

import httpx

from msgvoice.config import ResponderConfig
from msgvoice.net import base_url, bearer

log = logging.getLogger(__name__)


class Responder:
    """Asks a chat model for a reply; any failure is logged and yields no reply."""

    def __init__(self, config: ResponderConfig, client: httpx.AsyncClient) -> None:
        self.config = config
        self.client = client
        self.url = base_url(config.base_url) + "/v1/chat/completions"

    async def answer(self, chat_id: str, text: str) -> str | None:
        """The model's answer to `text`, or None."""
        headers = bearer(self.config.api_key)
        body = {
            "model": self.config.model,
            "max_tokens": self.config.max_tokens,  # a rambling model stops here, not at its context
            "messages": [
                {"role": "system", "content": self.config.system_prompt},
                {"role": "user", "content": text},
            ],
        }
        try:
            response = await self.client.post(
                self.url, json=body, headers=headers, timeout=self.config.timeout_s
            )
            response.raise_for_status()
            content = response.json()["choices"][0]["message"]["content"]
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
            log.warning("responder failed for chat=%s: %s", chat_id, exc)
            return None
        return str(content).strip() or None
