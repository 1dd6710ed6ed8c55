from __future__ import annotations

from trainer.errors import first_line


def test_first_line_of_a_message_and_of_an_empty_one() -> None:
    assert first_line(ValueError("\n  spec: bad\nmore detail")) == "spec: bad"
    assert first_line(KeyError()) == "KeyError"
    assert first_line(RuntimeError("   \n ")) == "RuntimeError"
