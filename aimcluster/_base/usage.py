"""What a reply cost: tokens and money, as the tool itself reports them."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import attrs

__all__ = ["Usage", "aider_usage", "total"]


def _plus(a: float | None, b: float | None) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return a + b


@attrs.frozen(kw_only=True)
class Usage:
    """Tokens and cost of one reply (or, summed, of many), where the tool reports them.

    ``None`` means the tool did not say; a sum is ``None`` only where no part said.
    """

    #: Tokens sent to the model (prompt, context and tool results), cached ones included.
    input_tokens: int | None = None
    #: Tokens the model generated.
    output_tokens: int | None = None
    #: Of :attr:`input_tokens`, those read from the provider's prompt cache.
    cached_tokens: int | None = None
    #: The cost in US dollars, as the tool computed it.
    cost_usd: float | None = None
    #: Model requests made for the reply (a tool may make several per prompt).
    requests: int | None = None

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        return Usage(
            input_tokens=_plus(self.input_tokens, other.input_tokens),
            output_tokens=_plus(self.output_tokens, other.output_tokens),
            cached_tokens=_plus(self.cached_tokens, other.cached_tokens),
            cost_usd=_plus(self.cost_usd, other.cost_usd),
            requests=_plus(self.requests, other.requests),
        )

    @property
    def tokens(self) -> int | None:
        """Input plus output tokens (``None`` if the tool reported neither)."""
        return _plus(self.input_tokens, self.output_tokens)  # type: ignore[no-any-return]

    @property
    def known(self) -> bool:
        """Whether the tool reported anything at all."""
        return any(value is not None for value in attrs.astuple(self))

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Usage | None:
        """The usage a journal or report recorded (``None``: not a usage record)."""
        if not isinstance(data, dict):
            return None
        fields = {name: data.get(name) for name in attrs.fields_dict(cls)}
        if not all(v is None or isinstance(v, (int, float)) for v in fields.values()):
            return None
        return cls(**fields)

    def describe(self) -> str:
        """A short line for people: ``1,234 tokens (1,000 in, 234 out), $0.0123``."""
        parts = []
        if self.tokens is not None:
            detail = []
            if self.input_tokens is not None:
                detail.append(f"{self.input_tokens:,} in")
            if self.output_tokens is not None:
                detail.append(f"{self.output_tokens:,} out")
            parts.append(f"{self.tokens:,} tokens ({', '.join(detail)})")
        if self.cost_usd is not None:
            parts.append(f"${self.cost_usd:.4f}")
        return ", ".join(parts) or "no usage reported"


def total(usages: Iterable[Usage | None]) -> Usage:
    """The sum of *usages* (``None`` entries skipped)."""
    result = Usage()
    for usage in usages:
        if usage is not None:
            result = result + usage
    return result


# "Tokens: 2.3k sent, 120 received. Cost: $0.01 message, $0.02 session." (aider prints it after
# each reply; "cache write"/"cache hit" parts may come between sent and received).
_AIDER_TOKENS = re.compile(
    r"Tokens: (?P<sent>[\d.,]+[kKmM]?) sent,(?:(?P<middle>.*?),)? (?P<received>[\d.,]+[kKmM]?) "
    r"received\.(?: Cost: \$(?P<cost>[\d.,]+) message)?"
)
_AIDER_CACHE_HIT = re.compile(r"(?P<hit>[\d.,]+[kKmM]?) cache hit")
_SUFFIX = {"": 1, "k": 1_000, "m": 1_000_000}


def _count(text: str) -> int:
    number = text.replace(",", "")
    scale = _SUFFIX[number[-1].lower()] if number[-1].isalpha() else 1
    digits = number[:-1] if number[-1].isalpha() else number
    return round(float(digits) * scale)


def aider_usage(text: str, events: Any = ()) -> Usage | None:
    """What aider's ``Tokens: 2.3k sent, 120 received. Cost: $0.01 message, ...`` lines in
    *text* add up to: one line per model request (a reply that reflects on a failed edit makes
    several). ``k`` and ``M`` suffixes are expanded; aider rounds them, so counts from 1,000 up
    are approximate. ``None`` if the reply has none (a command such as ``/add``)."""
    usages = []
    for found in _AIDER_TOKENS.finditer(text):
        hit = _AIDER_CACHE_HIT.search(found["middle"] or "")
        cost = found["cost"]
        usages.append(
            Usage(
                input_tokens=_count(found["sent"]),
                output_tokens=_count(found["received"]),
                cached_tokens=None if hit is None else _count(hit["hit"]),
                cost_usd=None if cost is None else float(cost.replace(",", "")),
                requests=1,
            )
        )
    return total(usages) if usages else None
