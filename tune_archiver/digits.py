"""Whole numbers as a user, a file or the environment writes them: the digits 0-9 alone.

str.isdigit() also takes '²', which int() refuses (a ValueError far from the input),
and other scripts' digits, which int() reads ('٣', an Arabic-Indic 3, is 3: an id no
--ids-from line could name). int() also refuses more than 4,300 digits.
"""

from __future__ import annotations

INT_DIGITS = 4300  # sys.get_int_max_str_digits()'s default: int() refuses longer text


def whole_number(text: str, most_digits: int = INT_DIGITS) -> int | None:
    """`text` as a number when it is the digits 0-9 alone, at most `most_digits` of
    them; else None."""
    if text.isascii() and text.isdigit() and len(text) <= most_digits:
        return int(text)
    return None
