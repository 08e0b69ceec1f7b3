"""The chat apps that push: each one msgvoice talks to is built here when its section is
switched on (its library imported only then)."""

from __future__ import annotations

from typing import Protocol

import httpx

from msgvoice.chat.port import ChatPort
from msgvoice.config import Config


class Channel(Protocol):
    """A push channel (Telegram, iMessage, Matrix, Discord, QQ, Feishu): runs until
    cancelled; its chats' ids start with `prefix`."""

    prefix: str

    async def run(self) -> None: ...


def push_channels(config: Config, router: ChatPort, client: httpx.AsyncClient) -> list[Channel]:
    """The chat apps that are switched on."""
    from msgvoice.channels.imessage import ImessageChannel  # noqa: PLC0415
    from msgvoice.channels.telegram import TelegramChannel  # noqa: PLC0415

    channels: list[Channel] = []
    if config.telegram.enabled:
        source = config.sources.get("telegram.token", "no token set (telegram.token)")
        channels.append(
            TelegramChannel(config.telegram, router, client=client, token_source=source)
        )
    if config.imessage.enabled:
        channels.append(ImessageChannel(config.imessage, router))
    if config.matrix.enabled:
        from msgvoice.channels.matrix import MatrixChannel  # noqa: PLC0415 (nio: only if used)

        channels.append(MatrixChannel(config.matrix, router))
    if config.discord.enabled:
        from msgvoice.channels.discord_bot import DiscordChannel  # noqa: PLC0415 (only if used)

        channels.append(DiscordChannel(config.discord, router))
    if config.qq.enabled:
        from msgvoice.channels.qq import QqChannel  # noqa: PLC0415 (only if used)

        channels.append(QqChannel(config.qq, router))
    if config.feishu.enabled:
        from msgvoice.channels.feishu import FeishuChannel  # noqa: PLC0415 (only if used)

        channels.append(FeishuChannel(config.feishu, router, client))
    return channels
