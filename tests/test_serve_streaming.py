"""`ChoiceText`: what a choice may show after each denoising step - the final prefix, with
partial characters and possible stop-string beginnings held back, cut at stop tokens and stop
strings - and that its deltas always add up to its final text. No server, no model."""

import pytest

pytest.importorskip("fastapi", reason="the server needs the 'serve' extra (make install)")

from difflm.serve.streaming import ChoiceText, TokenText, canvas_cells, sse  # noqa: E402

MASK, EOS = 99, 0
WORDS = {1: "To", 2: " be", 3: ",", 4: " or", 5: " not", 6: "\n", 7: "\xe2", 8: "\x80\x94"}  # 7+8: an em dash


class FakeTokenizer:
    """Byte-level-like: tokens are byte strings; decoding joins them and shows an incomplete
    UTF-8 character as U+FFFD, as byte-level BPE decoders do."""

    def decode(self, ids, skip_special_tokens=True, clean_up_tokenization_spaces=False):
        data = "".join(WORDS.get(i, "<eos>" if not skip_special_tokens else "") for i in ids).encode("latin-1")
        return data.decode("utf-8", errors="replace")


def choice(stops=(), stop_ids=(EOS,)):
    return ChoiceText(TokenText(FakeTokenizer()), MASK, list(stop_ids), list(stops))


def feed(text, steps):
    deltas = [text.update(generated, final=MASK not in generated) for generated in steps]
    return deltas


def test_only_the_final_prefix_is_sent():
    text = choice()
    deltas = feed(text, [[MASK, MASK, 3, MASK], [1, MASK, 3, MASK], [1, 2, 3, MASK], [1, 2, 3, 4]])
    assert deltas == ["", "To", " be,", " or"] and text.finish_reason == "length" and text.sent == "To be, or"
    assert text.tokens == [1, 2, 3, 4]


def test_a_stop_token_ends_the_choice_before_the_canvas_is_full():
    text = choice()
    deltas = feed(text, [[1, 2, EOS, MASK, MASK]])
    assert deltas == ["To be"] and text.ended and text.finish_reason == "stop" and text.tokens == [1, 2]
    assert text.update([1, 2, EOS, 4, 5], final=True) == ""  # nothing after the end


def test_a_character_split_across_tokens_is_held_back():
    text = choice()
    deltas = feed(text, [[1, 7, MASK], [1, 7, 8]])
    assert deltas == ["To", "\u2014"] and text.sent == "To\u2014"


def test_stop_strings_cut_the_text_and_their_beginnings_wait():
    text = choice(stops=[", or"])
    deltas = feed(text, [[1, 2, 3, MASK, MASK], [1, 2, 3, 4, MASK]])
    assert deltas == ["To be", ""] and text.finish_reason == "stop" and text.sent == "To be"
    other = choice(stops=[", and"])
    assert feed(other, [[1, 2, 3, MASK], [1, 2, 3, 4]]) == ["To be", ", or"]  # ", " was not the stop after all


@pytest.mark.parametrize("order", [[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [2, 0, 5, 1, 4, 3]])
def test_deltas_add_up_to_the_final_text_in_any_commit_order(order):
    final = [1, 2, 3, 7, 8, 5]
    canvas = [MASK] * 6
    text = choice(stops=["xyz"])
    sent = ""
    for position in order:
        canvas[position] = final[position]
        sent += text.update(list(canvas), final=MASK not in canvas)
    assert sent == text.sent == FakeTokenizer().decode(final) and text.finish_reason == "length"


def test_canvas_cells_and_sse():
    tokens = TokenText(FakeTokenizer())
    assert canvas_cells(tokens, [1, MASK, EOS], MASK) == ["To", None, "<eos>"]
    assert sse({"a": 1}) == b'data: {"a":1}\n\n' and sse("[DONE]") == b"data: [DONE]\n\n"
