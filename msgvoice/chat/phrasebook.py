"""Every sentence the bot says, in the chat's language: Chinese by default, English for chats
that write in English. A chat's language follows what its people last wrote in letters."""

from __future__ import annotations

import re

DEFAULT_LANG = "zh"
_CJK = re.compile(r"[\u3400-\u9fff]")
_LATIN = re.compile(r"[A-Za-z]{2,}")

TEXTS: dict[str, dict[str, str]] = {
    "zh": {
        "tts_usage": "用法：/tts 文本，或 /tts 风格：文本（例如 /tts 温柔：晚安）",
        "mode_usage": "用法：/mode，/mode voice on|off|both|audio|text，/mode style <描述>，"
        "/mode style off，/mode speaker <名字>",
        "help": "\n".join(
            [
                "/tts 文本 — 把文本读成语音",
                "/tts 风格：文本 — 用这个风格读这一条（例如 /tts 开心：你好）",
                "/mode — 查看本聊天的语音模式、风格和引擎",
                "/mode voice on|off|both|audio|text — 机器人回复是否配语音",
                "/mode style <描述> — 设置本聊天的语音风格；/mode style off 清除",
                "/mode speaker <名字> — 选择本聊天的音色；/mode speaker off 恢复默认",
                "/help — 显示本帮助",
            ]
        ),
        "greeting": "你好！我会把文字读成语音消息。",
        "mode.both": "文字+语音",
        "mode.text": "仅文字",
        "mode.audio": "仅语音",
        "voice_mode_set": "已设置语音模式：{mode}",
        "style_set": "已设置风格：{style}",
        "style_cleared": "已清除风格",
        "speaker_set": "已设置音色：{speaker}",
        "speaker_cleared": "已恢复默认音色",
        "speaker_unknown": "没有这个音色：{speaker}。可用的音色：{voices}",
        "show_mode": "语音模式：{mode}；风格：{style}；引擎：{engine}",
        "show_speaker": "；音色：{speaker}",
        "no_style": "无",
        "unknown": "未知命令 /{name}，发送 /help 查看可用命令",
        "placeholder": "正在生成语音…",
        "failed": "语音生成失败：{reason}",
        "text_only": "目前只支持文字消息，发送 /help 查看可用命令",
        "engine_fallback": "{engine}（{main} 不可用，已回退）",
        "storage_full": "存储空间或系统资源已用尽，暂时无法生成语音，请稍后再试",
        "nothing_to_speak": "这段文字里没有可以读出来的内容（只有表情、标点或空白）",
        "style_too_long": "风格描述太长了：最多 {max} 个字符",
        "encrypted": "这个房间是加密的，我读不了加密消息。请在未加密的房间里使用我",
        "console_banner": "msgvoice console: 输入 /tts 你好 或 /help；Ctrl-D 退出",
        "console_text": "机器人: {text}",
        "console_voice": "机器人: [语音] {path}{seconds}",
    },
    "en": {
        "tts_usage": "Usage: /tts text, or /tts style: text (e.g. /tts gentle: good night)",
        "mode_usage": "Usage: /mode, /mode voice on|off|both|audio|text, /mode style <desc>, "
        "/mode style off, /mode speaker <name>",
        "help": "\n".join(
            [
                "/tts text — speak the text",
                "/tts style: text — speak it in that style (e.g. /tts happy: hello)",
                "/mode — show this chat's voice mode, style and engine",
                "/mode voice on|off|both|audio|text — whether bot replies come as voice",
                "/mode style <desc> — set this chat's style; /mode style off clears it",
                "/mode speaker <name> — pick this chat's voice; /mode speaker off for the default",
                "/help — this help",
            ]
        ),
        "greeting": "Hello! I turn text into voice messages.",
        "mode.both": "text + voice",
        "mode.text": "text only",
        "mode.audio": "voice only",
        "voice_mode_set": "Voice mode: {mode}",
        "style_set": "Style set: {style}",
        "style_cleared": "Style cleared",
        "speaker_set": "Voice set: {speaker}",
        "speaker_cleared": "Back to the default voice",
        "speaker_unknown": "There is no voice named {speaker}. Voices: {voices}",
        "show_mode": "Voice mode: {mode}; style: {style}; engine: {engine}",
        "show_speaker": "; voice: {speaker}",
        "no_style": "none",
        "unknown": "Unknown command /{name}; send /help for the commands",
        "placeholder": "Recording a voice note…",
        "failed": "Could not make the voice note: {reason}",
        "text_only": "Only text messages are understood; send /help for the commands",
        "engine_fallback": "{engine} ({main} unavailable, falling back)",
        "storage_full": "The bot is out of storage or system resources, so it cannot make "
        "voice notes right now; please try again later",
        "nothing_to_speak": "There is nothing to speak in that: only emoji, punctuation or "
        "blank characters",
        "style_too_long": "That style description is too long: at most {max} characters",
        "encrypted": "This room is encrypted and I cannot read encrypted messages. "
        "Please use me in a room without encryption",
        "console_banner": "msgvoice console: type /tts hello or /help; Ctrl-D quits",
        "console_text": "bot: {text}",
        "console_voice": "bot: [voice] {path}{seconds}",
    },
}


def text(key: str, lang: str = DEFAULT_LANG, **values: str) -> str:
    """The reply `key` in `lang` (Chinese for an unknown language), filled in."""
    return TEXTS.get(lang, TEXTS[DEFAULT_LANG])[key].format(**values)


def detect(said: str) -> str | None:
    """The language of something a person wrote, or None when it does not say (digits, emoji):
    Chinese characters mean zh, Latin words en."""
    if _CJK.search(said):
        return "zh"
    if _LATIN.search(said):
        return "en"
    return None
