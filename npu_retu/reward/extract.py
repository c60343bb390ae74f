"""Which part of a response is scored, and how predictions are shortened for logs.

The rule (DESIGN "Known traps"): only the text after the last ``</think>`` counts, so a boxed
guess made while reasoning never scores; a ``<think>`` that is never closed means the response was
cut off at the length limit, which has no final answer; the final answer is the content of the last
``\\boxed{...}``. No final answer scores 0.

Pure string code (no math-verify): the trainer and the pool's parent process use it cheaply.
"""

from __future__ import annotations

import re

from npu_retu.data.schemas import last_boxed

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# `\boxed {x}` is the same TeX as `\boxed{x}`; last_boxed only knows the form without the space.
_SPACED_BRACE = re.compile(r"\\(boxed|fbox)\s+\{")
# `\boxed 7` boxes one token in TeX; models write it for short answers. Take the run of characters
# up to whitespace, `$` or a brace (a more lenient reading than TeX's single token: `\boxed 12`).
_SPACED_TOKEN = re.compile(r"\\boxed\s+([^\s${}]+)")


def final_answer_text(response: str) -> str | None:
    """The final answer of ``response`` (the last boxed content after the reasoning), or None.

    None when a ``<think>`` is left open (cut off while reasoning; this includes a second think
    block opened after the last ``</think>``), when there is no boxed answer after the last
    ``</think>``, when the last box is cut off before its closing brace, or when the box is empty.
    """
    close = response.rfind(THINK_CLOSE)
    tail = response[close + len(THINK_CLOSE) :] if close >= 0 else response
    if THINK_OPEN in tail:
        return None
    answer = _last_boxed_any(tail)
    if answer is None or not answer.strip():
        return None
    return answer.strip()


def _last_boxed_any(text: str) -> str | None:
    """``last_boxed`` extended to the spaced forms ``\\boxed {x}`` and ``\\boxed x``."""
    if "\\boxed" not in text and "\\fbox" not in text:  # the common fast path for long texts
        return None
    text = _SPACED_BRACE.sub(r"\\\1{", text)
    braced_at = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    spaced = None
    for spaced in _SPACED_TOKEN.finditer(text):
        pass
    if spaced is not None and spaced.start() > braced_at:
        return spaced.group(1).rstrip(".,;:")
    return last_boxed(text)


def truncate_for_log(text: str, limit: int = 300) -> str:
    """``text`` cut to about ``limit`` characters: head and tail kept, a marker says how much went.

    Lone surrogates (from bytes decoded with ``errors="surrogateescape"``) become ``?`` so that the
    result can always be printed and written as UTF-8 JSON.
    """
    text = text.encode("utf-8", "replace").decode("utf-8")
    if len(text) <= limit:
        return text
    head = max(limit // 2, 1)
    tail = max(limit - head, 1)
    cut = len(text) - head - tail
    return f"{text[:head]} …[{cut} chars cut]… {text[-tail:]}"
