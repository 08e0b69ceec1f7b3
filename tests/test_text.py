"""Normalisation, segmentation and truncation of Chinese, English and mixed text."""

from __future__ import annotations

import pytest

from msgvoice.speech.text import TINY_SEGMENT_CHARS, normalise, segment, sentences, truncate


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("你好！！！", "你好！"),
        ("真的吗？？？！", "真的吗！"),
        ("等等......好吧", "等等…好吧"),
        ("等等……好吧", "等等…好吧"),
        ("a  \t b", "a b"),
        ("第一行\r\n\r\n\r\n第二行", "第一行\n第二行"),
        ("  好的 ， 再见  ", "好的，再见"),
        ("我用 Python 写", "我用Python写"),
        ("", ""),
    ],
)
def test_normalise(raw: str, clean: str) -> None:
    """Repeated punctuation, ellipses, blank lines and stray spaces are tidied."""
    assert normalise(raw) == clean


def test_sentences_keep_their_punctuation_and_quotes() -> None:
    """Sentence ends stay with their sentence, closing quotes too; decimals do not split."""
    assert sentences("他说：“你好。”然后走了。") == ["他说：“你好。”", "然后走了。"]
    assert sentences("Pi is 3.14. Next!") == ["Pi is 3.14.", "Next!"]
    assert sentences("一\n二") == ["一", "二"]


def test_segments_respect_the_budget_and_lose_no_text() -> None:
    """Long mixed text splits at sentence ends within the budget, keeping every character."""
    text = "今天天气真好。我们出去玩吧！Shall we go to the park? 好的；走吧。" * 20
    pieces = segment(text, 40)
    assert all(len(p) <= 40 for p in pieces)
    assert "".join(pieces).replace(" ", "") == normalise(text).replace(" ", "")


def test_over_long_sentence_splits_at_commas_and_never_mid_word() -> None:
    """A sentence over budget breaks at commas, then spaces; English words stay whole."""
    english = "alpha beta gamma, delta epsilon zeta, eta theta iota kappa lambda mu nu xi."
    pieces = segment(english, 20)
    words = set(english.replace(",", "").replace(".", "").split())
    for piece in pieces:
        assert all(w.strip(",.") in words for w in piece.split())
    chinese = "一二三四五六七八九十，" * 6
    assert all(len(p) <= 22 for p in segment(chinese, 22))


def test_tiny_tail_is_merged() -> None:
    """A last piece shorter than the tiny limit joins the one before it."""
    pieces = segment("这是一个相当长的第一句话。好", 10)
    assert len(pieces[-1]) >= TINY_SEGMENT_CHARS or len(pieces) == 1
    assert pieces[-1].endswith("好")


def test_zero_budget_keeps_one_segment_and_empty_text_has_none() -> None:
    """Budget 0 switches length splitting off; blank text yields no segment."""
    assert segment("一。二。三。", 0) == ["一。二。三。"]
    assert segment("  \n ", 100) == []


def test_truncate_cuts_at_a_sentence_boundary() -> None:
    """Automatic replies are cut after the last whole sentence that fits."""
    assert truncate("第一句话。第二句话很长很长。第三句。", 12) == "第一句话。"
    assert truncate("短。", 12) == "短。"
    assert len(truncate("没有标点的一段很长很长很长很长的文字", 10)) <= 10
