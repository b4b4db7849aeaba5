"""What a figure kind is: a module of rcdm_lab.figures with typed `Settings` and `make(ctx, settings)`.

The module is the whole kind -- its code, the type and allowed values of its settings, and its line of the README's
figure table (`PAPER`, `SUMMARY`) -- and its values live in conf/figure/<kind>.yaml. Settings are built here from
the composed config, so every kind reports an unknown key, a wrong type or a missing value the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType, NoneType, UnionType
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, ValidationError

from rcdm_lab.errors import RCDMError
from rcdm_lab.settings import Rule

# What a figure module must define besides `Settings` and `make` (the README table and `make figures` read them).
METADATA = ("PAPER", "SUMMARY", "SEVERAL_MODELS")


@dataclass(frozen=True)
class FigureKind:
    """One figure kind: its module and the metadata the README table and `make figures` use."""

    name: str                  # the module's name: `rcdm-figure figure=<name>`, conf/figure/<name>.yaml
    module: ModuleType
    settings_type: type        # the module's frozen `Settings` dataclass
    paper: str                 # the paper items it renders, e.g. "Fig. 3/25/26"
    summary: str               # what it shows, in a few words
    several_models: bool       # it compares checkpoints (ckpts=[...]) rather than drawing from one

    @classmethod
    def of(cls, module: ModuleType) -> FigureKind | None:
        """The kind `module` defines, or None for a helper module (one without `Settings` and `make`)."""
        settings_type, make = getattr(module, "Settings", None), getattr(module, "make", None)
        if not (isinstance(settings_type, type) and dataclasses.is_dataclass(settings_type) and callable(make)):
            return None
        missing = [name for name in METADATA if not hasattr(module, name)]
        if missing:   # a bug in the figure module, not a user error
            raise TypeError(f"figure module {module.__name__} defines Settings and make but not {', '.join(missing)}")
        return cls(module.__name__.rpartition(".")[2], module, settings_type, module.PAPER, module.SUMMARY,
                   module.SEVERAL_MODELS)

    def settings(self, mapping: Mapping[str, Any]) -> Any:
        """This kind's `Settings` from a config mapping (the composed `figure:` block; its `kind` key is allowed).

        Unknown keys, values of the wrong type and missing values each raise RCDMError in one line naming
        `figure.<key>`; the ranges and choices are the dataclass's own checks (its `__post_init__`).
        """
        values = dict(OmegaConf.to_container(mapping, resolve=True) if isinstance(mapping, DictConfig) else mapping)
        kind = values.pop("kind", self.name)
        if kind != self.name:
            raise RCDMError(f"figure.kind={kind!r} given to the settings of figure kind {self.name!r}: "
                            f"use figure={kind} to select that kind")
        fields = [field.name for field in dataclasses.fields(self.settings_type)]
        for key in values:
            if key not in fields:
                close = difflib.get_close_matches(key, fields, n=1)
                hint = f" (did you mean figure.{close[0]}?)" if close else ""
                raise RCDMError(f"figure.{key} is not a setting of figure={self.name}{hint}; its settings: "
                                f"{', '.join(fields)}")
        try:
            return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(self.settings_type), values))
        except MissingMandatoryValue as error:
            key = _top_key(error.full_key)
            raise RCDMError(f"figure.{key} has no value: set it in conf/figure/{self.name}.yaml or pass "
                            f"figure.{key}=...") from None
        except ValidationError as error:
            key = _top_key(error.full_key)
            expected = describe_type(typing.get_type_hints(self.settings_type)[key])
            raise RCDMError(f"figure.{key}={values.get(key)!r} is not allowed: use {expected}") from None

    def make(self, ctx: Any, settings: Any) -> dict[str, Any]:
        """The figure: the module's `make(ctx, settings)` (PNG written through ctx, the numbers behind it returned)."""
        return self.module.make(ctx, settings)


def _top_key(full_key: Any) -> str:
    """'triples[0][1]' or 'a.b' -> the setting's own name, 'triples' / 'a'."""
    return re.split(r"[.\[]", str(full_key), maxsplit=1)[0]


_TYPE_WORDS = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("a string", "strings"),
               bool: ("true or false", "true/false values")}


def describe_type(hint: Any, plural: bool = False) -> str:
    """A settings type in words: int | None -> "an integer or null", list[int] -> "a list of integers"."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, UnionType):
        options = [describe_type(arg, plural) for arg in typing.get_args(hint) if arg is not NoneType]
        words = " or ".join(options) if len(options) < 3 else ", ".join(options[:-1]) + " or " + options[-1]
        return words + (" or null" if NoneType in typing.get_args(hint) else "")
    if origin is list:
        (item,) = typing.get_args(hint)
        return ("lists of " if plural else "a list of ") + describe_type(item, plural=True)
    if hint in _TYPE_WORDS:
        return _TYPE_WORDS[hint][1 if plural else 0]
    return "any value"


def check_settings(settings: Any, rules: Iterable[Rule]) -> None:
    """Check each rule's setting of a figure's `Settings`; a broken one raises RCDMError naming figure.<key>.

    For `Settings.__post_init__`: the rules are those of rcdm_lab.settings, keyed by the field's name.
    """
    for rule in rules:
        rule.under("figure.").check(getattr(settings, rule.key))
