"""The `<gen_image>` reply parser: official behaviour on well-formed replies, sane handling of malformed ones."""

from __future__ import annotations

import json
import time

import pytest

from llmga.cli import main as cli_main
from llmga.prompt import GEN_END, GEN_START, parse_reply


def official_caption(text: str) -> tuple[str, bool]:
    """The official CLI parser (cli-sd15*.py), re-implemented: (caption, image generated)."""
    id1, id2 = text.find(GEN_START), text.find(GEN_END)
    if id1 == -1 and id2 == -1:
        return text, False
    if id1 == -1:
        return text[:id2], False
    if id2 == -1:
        return text[id1 + 12:], True
    return text[id1 + 12:id2], True


WELL_FORMED = [
    "<gen_image> a red fox in deep snow, golden hour </gen_image>",
    "Sure, here you go. <gen_image> a cozy cabin by a lake, misty morning, 8k </gen_image>",
    "<gen_image> first scene, oil painting </gen_image> and then <gen_image> second scene </gen_image> done.",
    "Here: <gen_image> 一只在雪地里的红狐狸, 电影感光线 </gen_image>",
    "<gen_image> café crème on a marble table, soft light ☕ </gen_image>\n",
]


@pytest.mark.parametrize("reply", WELL_FORMED)
def test_well_formed_reply_matches_official_parser(reply):
    caption, generated = official_caption(reply)
    parsed = parse_reply(reply)
    assert parsed.has_prompt is generated
    assert parsed.prompt() == caption.strip()


def test_prompt_is_trimmed_and_display_text_shows_it():
    parsed = parse_reply("Sure!\n<gen_image>   a lighthouse at dusk \n </gen_image>\nAnything else?")
    assert parsed.prompt() == "a lighthouse at dusk"
    assert parsed.display_text == "Sure!\n\n(The generation prompt: a lighthouse at dusk)\n\nAnything else?"
    assert GEN_START not in parsed.display_text and GEN_END not in parsed.display_text


def test_no_tags_has_no_prompt_and_falls_back_to_whole_reply():
    parsed = parse_reply("  What style would you like?  ")
    assert not parsed.has_prompt
    assert parsed.prompts == ()
    assert parsed.prompt() == "What style would you like?"
    assert parsed.prompt(no_tag_fallback="empty") == ""
    assert parsed.display_text == "What style would you like?"


def test_only_start_tag_takes_rest_of_text():
    parsed = parse_reply("Okay. <gen_image> a castle on a hill, dramatic clouds")
    assert parsed.has_prompt
    assert parsed.prompt() == "a castle on a hill, dramatic clouds"
    assert parsed.display_text == "Okay.\n\n(The generation prompt: a castle on a hill, dramatic clouds)"


def test_only_end_tag_takes_text_before_it():
    parsed = parse_reply("a castle on a hill </gen_image> hope you like it")
    assert parsed.has_prompt
    assert parsed.prompt() == "a castle on a hill"
    assert parsed.display_text == "(The generation prompt: a castle on a hill)\n\nhope you like it"


def test_several_pairs_first_by_default_all_one_per_line():
    reply = "<gen_image> a cat </gen_image> or <gen_image> a dog\nrunning </gen_image> or <gen_image>a bird</gen_image>"
    parsed = parse_reply(reply)
    assert parsed.prompts == ("a cat", "a dog\nrunning", "a bird")
    assert parsed.prompt() == "a cat"
    assert parsed.prompt(which="all") == "a cat\na dog running\na bird"
    assert parsed.display_text.count("(The generation prompt:") == 3


def test_empty_input():
    for reply in ("", None, "   \n "):
        parsed = parse_reply(reply)
        assert not parsed.has_prompt
        assert parsed.prompt() == ""
        assert parsed.display_text == ""


def test_empty_tag_pair_is_not_a_prompt():
    parsed = parse_reply("Sorry. <gen_image>  </gen_image>")
    assert not parsed.has_prompt
    assert parsed.prompt(no_tag_fallback="empty") == ""
    assert parsed.display_text == "Sorry."


def test_stray_and_nested_tags_are_dropped():
    parsed = parse_reply("<gen_image> a <gen_image> b </gen_image> c </gen_image> d")
    assert parsed.prompts == ("a  b",)
    assert parsed.display_text == "(The generation prompt: a  b)\n\nc  d"
    assert "gen_image" not in parsed.display_text


def test_end_before_start_gives_both_prompts():
    parsed = parse_reply("first </gen_image> middle <gen_image> second")
    assert parsed.prompts == ("first", "second")


def test_tags_tolerate_case_and_inner_spaces():
    parsed = parse_reply("ok < GEN_IMAGE > a boat at sea < /gen_image >")
    assert parsed.prompt() == "a boat at sea"


def test_unicode_survives_unchanged():
    prompt = "サクラの木の下の猫, Ölgemälde, emoji 🌸🐱, RTL שלום"
    parsed = parse_reply(f"はい！<gen_image> {prompt} </gen_image>")
    assert parsed.prompt() == prompt
    assert parsed.display_text.startswith("はい！")


def test_very_long_reply_is_parsed_in_linear_time():
    body = "a very detailed scene with many objects, " * 50_000  # ~2 MB
    reply = "Sure. " + ("noise < text > " * 10_000) + f"<gen_image> {body} </gen_image>" + " tail" * 10_000
    start = time.perf_counter()
    parsed = parse_reply(reply)
    elapsed = time.perf_counter() - start
    assert parsed.prompt() == body.strip()
    assert elapsed < 5.0  # a quadratic scan would take minutes on this input


def test_invalid_options_name_the_choices():
    parsed = parse_reply("<gen_image> x </gen_image>")
    with pytest.raises(ValueError, match="expected one of"):
        parsed.prompt(which="last")
    with pytest.raises(ValueError, match="expected one of"):
        parsed.prompt(no_tag_fallback="nothing")


def test_cli_prints_prompt_and_exit_status(capsys):
    assert cli_main(["extract-prompt", "Sure <gen_image> a red fox </gen_image>"]) == 0
    assert capsys.readouterr().out == "a red fox\n"
    assert cli_main(["extract-prompt", "--no-tag-fallback", "empty", "no tags here"]) == 1
    assert capsys.readouterr().out == "\n"


def test_cli_json_reads_stdin(capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("<gen_image> a </gen_image> <gen_image> b </gen_image>"))
    assert cli_main(["extract-prompt", "--json", "--which", "all"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"prompt": "a\nb", "display_text": "(The generation prompt: a)\n\n(The generation prompt: b)",
                   "has_prompt": True, "prompts": ["a", "b"]}
