"""Read the PromQL back out of generated dashboard JSON.

`panel_queries` gives every panel query with Grafana's template variables
filled in, ready to send to a real Prometheus; `selectors` names the series
and labels a query reads, so tests can hold them against the contract.
"""

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# What Grafana's built-in interval variables become outside Grafana: short
# enough for a freshly started Prometheus to have data in the window.
DEFAULT_BUILTINS: Mapping[str, str] = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "1h",
}

_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)|\[\[(\w+)\]\]")


def iter_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that is not a row, including those inside collapsed rows."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def template_variables(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(dashboard.get("templating", {}).get("list", []))


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace `$name`, `${name}` and `[[name]]` with values[name]."""

    def one(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group is not None)
        if name not in values:
            raise ValueError(f"query variable ${name}: expected one of {sorted(values)}, got none for {expr!r}")
        return values[name]

    return _VARIABLE.sub(one, expr)


def panel_queries(
    dashboard: Mapping[str, Any],
    values: Mapping[str, str] | None = None,
    builtins: Mapping[str, str] = DEFAULT_BUILTINS,
) -> list[str]:
    """Every panel target's expr with template variables filled in.

    Dashboard variables default to `.*` (they are only used with `=~`), or
    take the concrete value given in `values`; Grafana's built-ins
    (`$__rate_interval`, `$__interval`, `$__range`) take `builtins`.
    """
    filled = {variable["name"]: ".*" for variable in template_variables(dashboard)}
    filled.update(values or {})
    filled.update(builtins)
    return [
        substitute(target["expr"], filled)
        for panel in iter_panels(dashboard)
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


@dataclass(frozen=True)
class Selector:
    """One series selector in a query: the metric name and the labels it matches on."""

    metric: str
    labels: frozenset[str]


_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "inf", "nan"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.])([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?\s*(\()?")
_MATCHER_LABEL = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")


def selectors(expr: str) -> list[Selector]:
    """The series selectors in a PromQL expression (functions, keywords,
    grouping labels and strings left out)."""
    text = _STRING.sub('""', expr)
    text = _RANGE.sub("", text)
    text = _GROUPING.sub("", text)
    found: list[Selector] = []
    for match in _IDENT.finditer(text):
        name, braces, call = match.groups()
        if call or name in _KEYWORDS:
            continue
        labels = frozenset(_MATCHER_LABEL.findall(braces or ""))
        found.append(Selector(name, labels))
    return found


_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*(\w+)\s*\)\s*$")


def variable_selectors(dashboard: Mapping[str, Any]) -> list[tuple[str, Selector]]:
    """(variable name, selector) for each query variable; the selector's
    labels include the label whose values the variable lists."""
    out: list[tuple[str, Selector]] = []
    for variable in template_variables(dashboard):
        if variable.get("type") != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = _LABEL_VALUES.match(text)
        if match is None:
            raise ValueError(f"variable {variable['name']}: expected label_values(SELECTOR, LABEL), got {text!r}")
        for selector in selectors(match.group(1)):
            out.append((variable["name"], Selector(selector.metric, selector.labels | {match.group(2)})))
    return out
