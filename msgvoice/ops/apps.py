"""doctor's look at the chat apps: Telegram's token and webhook (getMe, getWebhookInfo, as the
Bot API answers them), the Matrix homeserver and the bot's credentials, the Discord bot's token
and intents, the OneBot implementation QQ is reached through (its account), the Feishu app's
credentials and bot, and imsg (can it read
chat.db; is its IMCore bridge up for voice bubbles), each bounded and read-only."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import httpx

from msgvoice.channels.imsg_rpc import PERMISSION_HINTS, bridge_ready, full_disk_access_fix
from msgvoice.channels.outbox import ChannelError
from msgvoice.config import Config
from msgvoice.ops.probes import HTTP_PROBE_TIMEOUT_S, Check

IMSG_PROBE_TIMEOUT_S = 10.0
GATEWAY_MESSAGE_CONTENT, GATEWAY_MESSAGE_CONTENT_LIMITED = 1 << 19, 1 << 18
"""Application flags: the Message Content intent is switched on (resources/application.mdx)."""


async def check_telegram(config: Config, client: httpx.AsyncClient) -> Check | None:
    """The token is valid (getMe names the bot) and no webhook blocks polling."""
    tg = config.telegram
    if not tg.enabled:
        return None
    url = f"{tg.base_url.rstrip('/')}/bot{tg.token}"
    source = config.sources.get("telegram.token", "nowhere (telegram.token is empty)")
    try:
        me = (await client.post(f"{url}/getMe", timeout=HTTP_PROBE_TIMEOUT_S)).json()
        hook = (await client.post(f"{url}/getWebhookInfo", timeout=HTTP_PROBE_TIMEOUT_S)).json()
    except (httpx.HTTPError, ValueError) as exc:
        return Check("telegram", "warning", f"Bot API at {tg.base_url} unreachable: {exc}")
    if not me.get("ok"):
        return Check(
            "telegram",
            "error",
            f"the Bot API refused the token from {source}: {me.get('description')}",
            "set MSGVOICE_TELEGRAM_TOKEN (or TELEGRAM_BOT_TOKEN) to the token from @BotFather",
        )
    name = (me.get("result") or {}).get("username")
    webhook = ((hook.get("result") or {}) if hook.get("ok") else {}).get("url")
    if webhook and not tg.delete_webhook:
        return Check(
            "telegram",
            "warning",
            f"bot @{name} has a webhook ({webhook}): polling gets 409 Conflict",
            "turn telegram.delete_webhook on, or delete the webhook yourself",
        )
    note = f"; its webhook {webhook} is deleted at start" if webhook else ""
    return Check("telegram", "pass", f"bot @{name}, polling{note}")


async def check_discord(config: Config, client: httpx.AsyncClient) -> Check | None:
    """The token is the bot's (GET /users/@me), and the Message Content intent, if asked for,
    is switched on for its application (GET /applications/@me: GATEWAY_MESSAGE_CONTENT)."""
    dc = config.discord
    if not dc.enabled:
        return None
    headers = {"Authorization": f"Bot {dc.token}"}
    base = dc.api_base.rstrip("/")
    try:
        me = await client.get(f"{base}/users/@me", headers=headers, timeout=HTTP_PROBE_TIMEOUT_S)
        app = await client.get(
            f"{base}/applications/@me", headers=headers, timeout=HTTP_PROBE_TIMEOUT_S
        )
        bot, flags = me.json(), int(app.json().get("flags") or 0) if app.is_success else 0
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        return Check("discord", "warning", f"Discord API at {base} unreachable: {exc}")
    if me.status_code == 401 or not dc.token:
        return Check(
            "discord",
            "error",
            "Discord refused discord.token" if dc.token else "discord.token is not set",
            "set discord.token (or DISCORD_BOT_TOKEN) to the bot's token: Developer Portal → "
            "your application → Bot → Reset Token",
        )
    if not me.is_success:
        return Check("discord", "warning", f"Discord answered {me.status_code} for the bot")
    name = f"{bot.get('username')} ({bot.get('id')})"
    content = bool(flags & (GATEWAY_MESSAGE_CONTENT | GATEWAY_MESSAGE_CONTENT_LIMITED))
    if dc.message_content and not content:
        return Check(
            "discord",
            "error",
            f"bot {name}: discord.message_content is on, but the intent is not granted",
            "switch on Message Content (Developer Portal → Bot → Privileged Gateway Intents), "
            "or set discord.message_content = false (slash commands and DMs still work)",
        )
    plain = "every /tts in servers" if dc.message_content else "slash commands, DMs, mentions"
    return Check("discord", "pass", f"bot {name}: {plain}")


async def check_qq(config: Config) -> Check | None:
    """The OneBot implementation answers on its forward WebSocket, takes the access token,
    and names the QQ account it is logged in as (get_login_info)."""
    qq = config.qq
    if not qq.enabled:
        return None
    import aiohttp  # noqa: PLC0415 (only for a channel that is switched on)

    from msgvoice.channels import onebot_api  # noqa: PLC0415

    try:
        me, impl = await onebot_api.whoami(qq.url, qq.access_token, HTTP_PROBE_TIMEOUT_S)
    except onebot_api.LoginRefused as exc:
        return Check(
            "qq",
            "error",
            f"the OneBot implementation at {qq.url}: {exc}",
            "set qq.access_token to the token of its forward WebSocket server",
        )
    except (ChannelError, OSError, TimeoutError, aiohttp.ClientError) as exc:
        return Check(
            "qq",
            "warning",
            f"no OneBot implementation answers at {qq.url}: {exc or type(exc).__name__}",
            "start NapCat (or Lagrange.OneBot) with a forward WebSocket server, or set qq.url",
        )
    if not me.get("user_id"):
        return Check("qq", "warning", f"{impl} at {qq.url} is not logged in to QQ")
    return Check("qq", "pass", f"QQ {me.get('nickname', '')} ({me['user_id']}) through {impl}")


async def check_feishu(config: Config, client: httpx.AsyncClient) -> Check | None:
    """The app's credentials give a tenant token, its bot ability is on (bot/v3/info), and
    the long connection's endpoint answers (events need "receive events through a long
    connection" chosen in the console)."""
    fs = config.feishu
    if not fs.enabled:
        return None
    from msgvoice.channels import lark_api  # noqa: PLC0415 (protobuf: only when switched on)

    api = lark_api.Api(client, fs.domain, fs.app_id, fs.app_secret)
    try:
        bot = await api.bot()
        await api.endpoint()
    except lark_api.CredentialsRefused as exc:
        return Check(
            "feishu",
            "error",
            f"Feishu refused the app's credentials ({exc})",
            "set feishu.app_id and feishu.app_secret (developer console → Credentials & Basic "
            'Info); for Lark set feishu.domain = "https://open.larksuite.com"',
        )
    except ChannelError as exc:
        return Check(
            "feishu",
            "warning",
            f"Feishu at {fs.domain}: {exc}",
            "switch on the bot ability, and choose the long connection for events, then "
            "publish a version of the app",
        )
    return Check("feishu", "pass", f"bot {bot.get('app_name', '')} ({bot.get('open_id', '')})")


async def check_matrix(config: Config, client: httpx.AsyncClient) -> Check | None:
    """The homeserver answers as one, and takes the access token (whoami) or offers the
    password login (doctor does not log in: that would add a device each time)."""
    mx = config.matrix
    if not mx.enabled:
        return None
    fix = "set [channels.matrix] homeserver to the bot's homeserver URL (https://...)"
    base = mx.homeserver.rstrip("/") + "/_matrix/client"
    auth = {"Authorization": f"Bearer {mx.access_token}"} if mx.access_token else {}
    try:
        versions = (await client.get(f"{base}/versions", timeout=HTTP_PROBE_TIMEOUT_S)).json()
        path = "v3/account/whoami" if auth else "v3/login"
        answer = await client.get(f"{base}/{path}", headers=auth, timeout=HTTP_PROBE_TIMEOUT_S)
        body = answer.json()
    except (httpx.HTTPError, ValueError) as exc:
        if not mx.homeserver:
            return Check("matrix", "error", "matrix.homeserver is not set", fix)
        return Check("matrix", "warning", f"homeserver {mx.homeserver} unreachable: {exc}")
    if not isinstance(versions, dict) or "versions" not in versions:
        return Check("matrix", "error", f"{mx.homeserver} is not a Matrix homeserver", fix)
    flows = [f.get("type") for f in body.get("flows", [])] if not auth else []
    if auth:
        ok = answer.status_code == 200
        what = (
            f"bot {body.get('user_id')} (access token)"
            if ok
            else (f"the homeserver refused matrix.access_token: {body.get('errcode')}")
        )
    elif "m.login.password" not in flows:
        ok, what = False, "this homeserver offers no password login"
    else:
        ok = bool(mx.user_id and mx.password)
        what = (
            f"bot {mx.user_id} logs in with its password"
            if ok
            else ("matrix.user_id and matrix.password (or matrix.access_token) are not set")
        )
    fix = "set matrix.user_id and matrix.password, or matrix.access_token, of the bot account"
    return Check("matrix", "pass", what) if ok else Check("matrix", "error", what, fix)


async def check_imessage(config: Config) -> Check | None:
    """imsg runs, can read chat.db, and says whether voice notes can be voice bubbles."""
    if not config.imessage.enabled:
        return None
    command = list(config.imessage.command)
    try:
        answer = await _one_request(command, "chats.list", {"limit": 1})
    except (OSError, TimeoutError, ValueError) as exc:
        return Check(
            "imessage",
            "error",
            f"{command[0]} does not answer: {exc}",
            "install imsg (brew install steipete/tap/imsg) or fix [channels.imessage] command",
        )
    data = str((answer.get("error") or {}).get("data") or "")
    if any(hint in data for hint in PERMISSION_HINTS):
        return Check(
            "imessage",
            "error",
            "imsg cannot read chat.db (no Full Disk Access)",
            full_disk_access_fix() + " (and allow it to control Messages under Automation)",
        )
    if "error" in answer:
        return Check("imessage", "warning", f"imsg answered chats.list with {answer['error']}")
    bubbles = await bridge_ready(command, IMSG_PROBE_TIMEOUT_S)
    how = (
        "voice bubbles (send.attachment as_voice)"
        if bubbles
        else ("ordinary attachments: voice bubbles need imsg's IMCore bridge (see imsg's docs)")
    )
    return Check("imessage", "pass", f"imsg reads chat.db; voice notes go as {how}")


async def _one_request(command: list[str], method: str, params: dict[str, Any]) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    request = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(request).encode() + b"\n")
        await proc.stdin.drain()
        async with asyncio.timeout(IMSG_PROBE_TIMEOUT_S):
            while line := await proc.stdout.readline():
                answer = json.loads(line)
                if answer.get("id") == 1:
                    return dict(answer)
        raise ValueError("imsg exited without answering")
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
