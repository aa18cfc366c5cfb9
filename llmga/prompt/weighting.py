"""Parse attention-weight syntax in a prompt: `(word)`, `(word:1.3)`, `[word]` and backslash escapes.

This is the syntax of the "long prompt weighting" pipelines that LLMGA's inference code runs
(`parse_prompt_attention` in llmga/diffusers/pipeline_stable_diffusion_inpaint_lpw.py, identical to the
diffusers community `lpw_stable_diffusion` pipeline that cli-sd15.py loads). The result is the same list of
`(text, weight)` fragments, quirks included:

- `(text)` multiplies by 1.1, `[text]` divides by 1.1, `(text:w)` multiplies by w; nesting multiplies;
- brackets still open at the end apply to everything after them; a `)` or `]` with nothing open is text,
  as is `:w)` with no open `(`;
- `\\(`, `\\)`, `\\[`, `\\]`, `\\\\` are literal characters; a backslash before anything else is dropped,
  but it still ends the current fragment (it leaves an empty fragment of weight 1.0 behind);
- adjacent fragments of exactly equal weight are merged (so they are tokenized as one string);
- an empty prompt gives `[("", 1.0)]`.

One deliberate difference: a weight that is not a number (`(word:.)`, `(word:1.2.3)`) makes the official
parser raise `ValueError`; here the `:...)` is kept as literal text of weight 1.0, so a generated prompt
can never fail to encode.
"""

from __future__ import annotations

import re

# The multipliers of `(text)` and `[text]` (parse_prompt_attention: round 1.1, square 1 / 1.1).
ROUND_BRACKET_MULTIPLIER = 1.1
SQUARE_BRACKET_MULTIPLIER = 1 / 1.1

# One lexical piece per match, alternatives in the order the official scanner tries them.
_PIECE = re.compile(
    r"""
      \\[()\[\]\\]          # an escaped bracket or backslash: a literal character
    | \\                    # any other backslash: dropped
    | [(\[]                 # an opening bracket
    | :([+-]?[.\d]+)\)      # ":1.3)": closes a round bracket with an explicit weight
    | [)\]]                 # a closing bracket
    | [^\\()\[\]:]+         # plain text
    | :                     # a colon that starts no weight
    """,
    re.VERBOSE,
)


def parse_prompt_weights(text: str) -> list[tuple[str, float]]:
    """Split `text` into `(fragment, weight)` pairs, exactly as the official lpw parser does.

    Input: a prompt string. Output: a non-empty list of fragments in order; a fragment's weight is the product
    of the multipliers of every bracket open around it.
    """
    fragments: list[list] = []  # [text, weight], mutable while brackets close
    open_round: list[int] = []  # index of the first fragment inside each open "(" bracket
    open_square: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for fragment in fragments[start:]:
            fragment[1] *= factor

    for match in _PIECE.finditer(text):
        piece, weight = match.group(0), match.group(1)
        if piece.startswith("\\"):
            fragments.append([piece[1:], 1.0])
        elif piece == "(":
            open_round.append(len(fragments))
        elif piece == "[":
            open_square.append(len(fragments))
        elif weight is not None and open_round and _is_number(weight):
            scale_from(open_round.pop(), float(weight))
        elif piece == ")" and open_round:
            scale_from(open_round.pop(), ROUND_BRACKET_MULTIPLIER)
        elif piece == "]" and open_square:
            scale_from(open_square.pop(), SQUARE_BRACKET_MULTIPLIER)
        else:
            fragments.append([piece, 1.0])

    for start in open_round:
        scale_from(start, ROUND_BRACKET_MULTIPLIER)
    for start in open_square:
        scale_from(start, SQUARE_BRACKET_MULTIPLIER)

    merged: list[tuple[str, float]] = []
    for piece, weight in fragments:
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + piece, weight)
        else:
            merged.append((piece, weight))
    return merged or [("", 1.0)]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
