"""The chat apps' config sections (TOML: [channels.<app>]), one frozen dataclass each, a
one-line docstring per key, as in `sections`."""

from __future__ import annotations

from dataclasses import dataclass

from msgvoice.config.sections import key


@dataclass(frozen=True)
class TelegramConfig:
    enabled: bool = False
    """Run the Telegram channel (TOML: [channels.telegram])."""
    token: str = ""
    """Bot API token from @BotFather."""
    base_url: str = "https://api.telegram.org"
    """Bot API server (a local telegram-bot-api server works too)."""
    poll_timeout_s: int = key(30, lo=0, hi=50)
    """Long-polling wait of getUpdates."""
    allow: tuple[str, ...] = ()
    """Telegram chat or user ids allowed to use commands (empty = everyone)."""
    delete_webhook: bool = True
    """When a webhook blocks polling (409), delete it once and poll."""


@dataclass(frozen=True)
class ImessageConfig:
    enabled: bool = False
    """Run the iMessage channel through `imsg rpc` (TOML: [channels.imessage])."""
    command: tuple[str, ...] = ("imsg", "rpc")
    """The imsg program and its arguments."""
    request_timeout_s: float = key(30.0, lo=0.1, hi=600)
    """Bound on one JSON-RPC request to imsg (its worst send: 15 s to launch Messages + 10 s)."""
    voice_format: str = key("caf", choices=("caf", "mp3"))
    """caf: Opus 24 kHz mono in CAF (Messages' own voice-note format); mp3: MP3 attachments."""
    allow: tuple[str, ...] = ()
    """Chat ids or sender handles allowed to use commands (empty = everyone)."""


@dataclass(frozen=True)
class MatrixConfig:
    enabled: bool = False
    """Run the Matrix channel (TOML: [channels.matrix])."""
    homeserver: str = ""
    """The bot account's homeserver, e.g. "https://matrix.example.org"."""
    user_id: str = ""
    """The bot's Matrix ID, e.g. "@msgvoice:example.org"."""
    password: str = ""
    """Its password (logs in once; the session is kept in the state dir), or:"""
    access_token: str = ""
    """an access token of the bot account (used instead of the password)."""
    allow: tuple[str, ...] = ()
    """Matrix user or room ids allowed to use commands and to invite the bot (empty = all)."""
    sync_timeout_s: int = key(30, lo=0, hi=120)
    """Long-polling wait of /sync."""


@dataclass(frozen=True)
class DiscordConfig:
    enabled: bool = False
    """Run the Discord channel (TOML: [channels.discord])."""
    token: str = ""
    """The bot's token (Developer Portal → the application → Bot → Reset Token)."""
    allow: tuple[str, ...] = ()
    """Discord user or channel ids allowed to use commands (empty = everyone)."""
    message_content: bool = False
    """Read every plain `/tts ...` in servers (the Message Content intent: switch it on first)."""
    api_base: str = "https://discord.com/api/v10"
    """The REST API's base URL (the Gateway's comes from its /gateway/bot)."""


@dataclass(frozen=True)
class QqConfig:
    enabled: bool = False
    """Run the QQ channel through a OneBot v11 implementation (TOML: [channels.qq])."""
    url: str = "ws://127.0.0.1:3001"
    """Its forward WebSocket server (NapCat, Lagrange.OneBot, LLOneBot: enable one)."""
    access_token: str = ""
    """The token set there, if any (sent as `Authorization: Bearer`)."""
    allow: tuple[str, ...] = ()
    """QQ numbers, or `group:<number>` for a whole group, allowed to use commands (empty = all)."""
    request_timeout_s: float = key(60.0, lo=1, hi=600)
    """Bound on one API call (a voice note is uploaded to QQ before the call is answered)."""


@dataclass(frozen=True)
class FeishuConfig:
    enabled: bool = False
    """Run the Feishu / Lark channel over its long connection (TOML: [channels.feishu])."""
    app_id: str = ""
    """The app's App ID (developer console → the app → Credentials & Basic Info)."""
    app_secret: str = ""
    """Its App Secret."""
    domain: str = "https://open.feishu.cn"
    """Feishu; "https://open.larksuite.com" for Lark (international)."""
    allow: tuple[str, ...] = ()
    """open_ids of people, or chat ids (oc_...), allowed to use commands (empty = everyone)."""
