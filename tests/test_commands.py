"""The chat command parser, table-driven, including the upstream quirks it must not repeat."""

from __future__ import annotations

import pytest

from msgvoice.chat.commands import (
    Command,
    Help,
    PlainText,
    SetSpeaker,
    SetStyle,
    SetVoiceMode,
    ShowMode,
    Speak,
    Unknown,
    Usage,
    parse,
)

CASES: list[tuple[str, Command | type]] = [
    ("/tts 晚安", Speak("晚安")),
    ("/tts 温柔：晚安", Speak("晚安", "温柔")),
    ("/tts 温柔:晚安", Speak("晚安", "温柔")),
    ("/tts  开心 ：  今天天气真好 ", Speak("今天天气真好", "开心")),
    ("/TTS 开心：你好", Speak("你好", "开心")),
    ("/tts@my_bot 开心：你好", Speak("你好", "开心")),
    ("/tts\n开心：你好", Speak("你好", "开心")),
    # a time is not a style
    ("/tts 10:30开会", Speak("10:30开会")),
    ("/tts 10：30 开会", Speak("10：30 开会")),
    # a URL scheme is not a style
    ("/tts http://example.com 看看", Speak("http://example.com 看看")),
    ("/tts https://a.b/c", Speak("https://a.b/c")),
    # only the first colon splits
    ("/tts 开心：他说：你好", Speak("他说：你好", "开心")),
    # a head over 20 characters is text, not a style
    ("/tts " + "长" * 21 + "：文本", Speak("长" * 21 + "：文本")),
    ("/tts " + "长" * 20 + "：文本", Speak("文本", "长" * 20)),
    # nothing to speak is a usage error, never audio
    ("/tts", Usage),
    ("/tts   ", Usage),
    ("/tts 温柔：", Usage),
    ("/tts 温柔：   ", Usage),
    # an empty head is not a style
    ("/tts ：晚安", Speak("：晚安")),
    ("/mode", ShowMode()),
    ("/mode voice on", SetVoiceMode("both")),
    ("/mode voice off", SetVoiceMode("text")),
    ("/mode voice both", SetVoiceMode("both")),
    ("/mode voice audio", SetVoiceMode("audio")),
    ("/mode voice TEXT", SetVoiceMode("text")),
    ("/mode voice loud", Usage),
    ("/mode voice", Usage),
    ("/mode style 撒娇", SetStyle("撒娇")),
    ("/mode style 有点 生气 的 语气", SetStyle("有点 生气 的 语气")),
    # every clearing form clears; none stores the word as a style
    ("/mode style off", SetStyle(None)),
    ("/mode style reset", SetStyle(None)),
    ("/mode style clear", SetStyle(None)),
    ("/mode style OFF", SetStyle(None)),
    ("/mode style-reset", SetStyle(None)),
    ("/mode style", Usage),
    ("/mode colour red", Usage),
    ("/mode speaker alice", SetSpeaker("alice")),
    ("/mode speaker off", SetSpeaker(None)),
    ("/mode speaker", Usage),
    ("/help", Help()),
    ("/start", Help(greet=True)),  # what Telegram sends when a chat opens the bot
    ("/start@msgvoice_bot", Help(greet=True)),
    ("/", Unknown("")),
    ("晚安", PlainText("晚安")),
    ("  hello  ", PlainText("hello")),
]


@pytest.mark.parametrize(("line", "expected"), CASES)
def test_parse(line: str, expected: Command | type) -> None:
    """Each chat line parses to exactly the command the design table gives."""
    got = parse(line)
    if isinstance(expected, type):
        assert isinstance(got, expected)
    else:
        assert got == expected
