"""One module per figure kind; `rcdm-figure figure=<kind>` runs `rcdm_lab.figures.<kind>.make`.

A module is a figure kind when it defines a frozen dataclass `Settings` (typed and validated fields: the settings
of conf/figure/<kind>.yaml), `make(ctx: FigureContext, settings: Settings) -> dict` (builds representations,
samples -- batched, with fixed noise where the paper compares columns --, writes its PNG through `ctx.save` and
returns the numbers behind it) and its README line: `PAPER`, `SUMMARY`, `SEVERAL_MODELS`. Kinds are discovered
here, so adding one is a new module plus its yaml. Helper modules (context, blocks, probe_source, kind) are not
kinds.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from rcdm_lab.errors import RCDMError
from rcdm_lab.figures.kind import FigureKind

__all__ = ["FIGURE_KINDS", "FigureKind", "discover", "figure_kind"]


def discover(path: Iterable[str], prefix: str) -> dict[str, FigureKind]:
    """The figure kinds among the modules in `path` (imported as `prefix` + name), by name."""
    kinds = {}
    for info in sorted(pkgutil.iter_modules(list(path)), key=lambda info: info.name):
        kind = FigureKind.of(importlib.import_module(prefix + info.name))
        if kind is not None:
            kinds[kind.name] = kind
    return kinds


FIGURE_KINDS: Mapping[str, FigureKind] = MappingProxyType(discover(__path__, f"{__name__}."))


def figure_kind(name: str) -> FigureKind:
    """The figure kind called `name`; an unknown one raises RCDMError with the closest name and the known kinds."""
    if name in FIGURE_KINDS:
        return FIGURE_KINDS[name]
    close = difflib.get_close_matches(str(name), list(FIGURE_KINDS), n=1)
    hint = f" (did you mean figure={close[0]}?)" if close else ""
    raise RCDMError(f"unknown figure kind {name!r}{hint}; figure kinds: {', '.join(FIGURE_KINDS)}")
