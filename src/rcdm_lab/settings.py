"""Checking user settings before any work starts: each rule names its setting and the values it accepts.

A bad override (`n=-3`, `model.optimizer.lr=abc`) must stop a command in its first second with one line -- not
after rendering and caching 10 000 images, and not as a traceback from deep inside torch. Commands list their
rules (`rcdm_lab.cli.validation`); a metric module may add its own `RULES` for its settings block, and a figure
kind checks its typed `Settings` with these rules (`rcdm_lab.figures.kind.check_settings`).

    check(cfg, [integer("n"), number("model.optimizer.lr", above=0, example="1e-4")])
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from rcdm_lab.errors import RCDMError

_ABSENT = object()


@dataclass(frozen=True)
class Rule:
    """`key` (a dotted path) must satisfy `accepts`; `allowed` says in words what it accepts.

    `accepts` returns True/False, or raises RCDMError with its own, more specific message. An absent key is not
    checked (configs differ between datasets and commands); `optional=True` also lets null through.
    """

    key: str
    accepts: Callable[[Any], bool]
    allowed: str
    optional: bool = False

    def check(self, value: Any) -> None:
        if value is None and self.optional:
            return
        try:
            ok = self.accepts(value)
        except RCDMError as error:
            # The parser's own message; prefixed with the setting unless it already names it in full.
            named = self.key in str(error)
            raise RCDMError(str(error) if named else f"{self.key}={_show(value)}: {error}") from None
        except (TypeError, ValueError, RuntimeError):  # what parsers (int(), torch.device, ...) raise on junk
            ok = False
        if not ok:
            null = " (or null)" if self.optional else ""
            raise RCDMError(f"{self.key}={_show(value)} is not allowed: use {self.allowed}{null}")

    def under(self, prefix: str) -> Rule:
        """The same rule for the setting at `prefix` + key (a block placed elsewhere in a config)."""
        return Rule(f"{prefix}{self.key}", self.accepts, self.allowed, self.optional)


def _show(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=False)
    return repr(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def integer(key: str, minimum: int = 1, maximum: int | None = None, optional: bool = False) -> Rule:
    """A whole number in [minimum, maximum]."""
    span = f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"
    return Rule(key, lambda v: _is_int(v) and v >= minimum and (maximum is None or v <= maximum), span, optional)


def number(key: str, *, at_least: float | None = None, above: float | None = None, at_most: float | None = None,
           below: float | None = None, example: str | None = None, optional: bool = False) -> Rule:
    """A finite number within the given bounds (`at_least`/`at_most` inclusive, `above`/`below` exclusive)."""
    bounds = [(at_least, ">=", lambda v, b: v >= b), (above, ">", lambda v, b: v > b),
              (at_most, "<=", lambda v, b: v <= b), (below, "<", lambda v, b: v < b)]
    bounds = [(b, sign, test) for b, sign, test in bounds if b is not None]
    words = "a number" + "".join(f"{' and' if i else ''} {sign} {b:g}" for i, (b, sign, _) in enumerate(bounds))
    if example:
        words += f" (e.g. {example})"
    return Rule(key, lambda v: _is_number(v) and all(test(v, b) for b, _, test in bounds), words, optional)


def one_of(key: str, choices: Iterable[Any], optional: bool = False) -> Rule:
    options = tuple(choices)
    return Rule(key, lambda v: v in options, "one of " + ", ".join(str(c) for c in options), optional)


def all_of(key: str, choices: Iterable[Any]) -> Rule:
    """A list whose every item is one of `choices`."""
    options = tuple(choices)
    return Rule(key, lambda v: isinstance(v, (list, tuple, ListConfig)) and all(item in options for item in v),
                "a list of " + ", ".join(str(c) for c in options))


def flag(key: str) -> Rule:
    return Rule(key, lambda v: isinstance(v, bool), "true or false")


def satisfies(key: str, check: Callable[[Any], Any], allowed: str, optional: bool = False) -> Rule:
    """A rule from a function that raises RCDMError/ValueError on a bad value (e.g. the parser that will read it)."""

    def accepts(value: Any) -> bool:
        check(value)
        return True

    return Rule(key, accepts, allowed, optional)


def check(cfg: DictConfig, rules: Sequence[Rule]) -> None:
    """Raise RCDMError for the first setting of `cfg` that breaks its rule.

    Absent settings are skipped, and so are `???` ones (`require_values` names those).
    """
    for rule in rules:
        value = OmegaConf.select(cfg, rule.key, default=_ABSENT)
        if value is not _ABSENT:
            rule.check(value)
