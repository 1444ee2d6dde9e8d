"""What vislib offers, read from its registries and parameter declarations: `vislib list` and docs/parameters.md."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from vislib.params import NoParams, ParamInfo, describe

KINDS = ("methods", "metrics", "featvis", "models", "datasets")


@dataclass(frozen=True)
class Entry:
    """One registered thing: its name, a one-line summary, facts worth a column and its parameters."""

    name: str
    summary: str
    facts: dict[str, str] = field(default_factory=dict)
    params: list[ParamInfo] = field(default_factory=list)


def _summary(obj: object) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def _params(declaration: type) -> list[ParamInfo]:
    return [] if declaration is NoParams else describe(declaration)


def _methods() -> list[Entry]:
    from vislib.methods import METHODS

    return [Entry(name, _summary(cls), {"layer": "yes" if cls.uses_layer else "no"}, _params(cls.Params))
            for name, cls in ((n, METHODS[n]) for n in METHODS.names())]


def _metrics() -> list[Entry]:
    from vislib.metrics import METRICS

    return [Entry(name, _summary(cls), {"better": "higher" if cls.higher_is_better else "lower",
                                        "dataset-level": "yes" if cls.reduces_over_dataset else "no",
                                        **({"experiment top_k": f">= {cls.needs_top_k}"} if cls.needs_top_k > 1
                                           else {})},
                  _params(cls.Params))
            for name, cls in ((n, METRICS[n]) for n in METRICS.names())]


def _featvis() -> list[Entry]:
    from vislib.featvis import FEATVIS

    return [Entry(name, _summary(cls), {"units": cls.unit_source}, _params(cls.Params))
            for name, cls in ((n, FEATVIS[n]) for n in FEATVIS.names())]


def _models() -> list[Entry]:
    from vislib.models import MODELS
    from vislib.models.torchvision_models import DEFAULT_LAYERS

    entries = []
    for name in MODELS.names():
        summary = _summary(MODELS[name]) if name not in DEFAULT_LAYERS else f"torchvision {name}"
        entries.append(Entry(name, summary))
    return entries


def _datasets() -> list[Entry]:
    from vislib.data import DATASETS

    return [Entry(name, _summary(DATASETS[name].Params) if DATASETS[name].Params is not NoParams else "",
                  {}, _params(DATASETS[name].Params)) for name in DATASETS.names()]


CATALOG: dict[str, Callable[[], list[Entry]]] = {
    "methods": _methods, "metrics": _metrics, "featvis": _featvis, "models": _models, "datasets": _datasets,
}
TITLES = {"methods": "Attribution methods (`methods:`)", "metrics": "Metrics (`metrics:`)",
          "featvis": "Feature-visualization methods (`featvis:`)", "models": "Model architectures (`models.*.arch`)",
          "datasets": "Dataset kinds (`datasets.*.kind`, parameters under `params:`)"}


def entries(kind: str) -> list[Entry]:
    """Every registered entry of `kind` (one of KINDS)."""
    return CATALOG[kind]()


def _cell(value: object) -> str:
    """A value as a Markdown table cell: pipes escaped, so that a type such as `str | None` stays one cell."""
    return str(value).replace("|", "\\|")


def _default(value: object) -> str:
    """A default as Python writes it (strings quoted, so '' and 'none' read apart from None)."""
    return repr(value)


def as_text(kind: str) -> str:
    """A plain listing for the terminal: one line per entry, then its parameters indented."""
    lines = []
    for entry in entries(kind):
        facts = "".join(f"  [{k}: {v}]" for k, v in entry.facts.items())
        lines.append(f"{entry.name}{facts}  {entry.summary}".rstrip())
        for p in entry.params:
            allowed = f"; {p.allowed}" if p.allowed else ""
            lines.append(f"    {p.name} ({p.type}, default {_default(p.default)}{allowed}): {p.help}")
    return "\n".join(lines) + "\n"


def as_markdown(kinds: tuple[str, ...] = KINDS) -> str:
    """Markdown: per kind, a section per entry with its facts and a parameter table."""
    lines = ["# Parameters", "",
             "Generated from vislib's registries and parameter declarations by `vislib list all --markdown`; a test",
             "keeps this file in step with the code. Every key below is checked by the config check before any job",
             "runs: unknown keys, wrong types and values outside the allowed range stop the run with a message.", ""]
    for kind in kinds:
        lines += [f"## {TITLES[kind]}", ""]
        for entry in entries(kind):
            lines += [f"### `{entry.name}`", ""]
            if entry.summary:
                lines += [entry.summary, ""]
            if entry.facts:
                lines += ["; ".join(f"{k}: {v}" for k, v in entry.facts.items()), ""]
            if entry.params:
                lines += ["| parameter | type | default | allowed | meaning |", "|---|---|---|---|---|"]
                lines += [f"| `{p.name}` | {_cell(p.type)} | `{_cell(_default(p.default))}` | {_cell(p.allowed)} | "
                          f"{_cell(p.help)} |"
                          for p in entry.params]
                lines.append("")
            elif kind not in ("models",):
                lines += ["No parameters.", ""]
    return "\n".join(lines).rstrip() + "\n"
