"""The report's HTML: the Jinja template beside this module, number formatting, embedded figures, and the context."""

from __future__ import annotations

import base64
import datetime
import importlib.resources
import math
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from lit_tuning.analysis.report_data import ReportData
from lit_tuning.sweep.trial_record import ascending, param_columns

TEMPLATE = "report.html.j2"


def render(context: dict[str, Any]) -> str:
    """Render the HTML template beside this module; every value is HTML-escaped unless marked safe."""
    text = importlib.resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8")
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    environment.filters["num"] = number
    return environment.from_string(text).render(**context)


def embed_png(path: Path) -> str:
    """A data: URI of a PNG, so that the report opens offline from disk with no files beside it."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def number(value: Any, digits: int = 4) -> str:
    """A table cell: '–' for missing, learning rates with their significant digits, thousands separated."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        if math.isinf(value):
            return str(value)
        return f"{value:.3g}" if 0 < abs(value) < 0.01 else f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def figure_entries(figures: list[Path]) -> list[dict[str, str]]:
    """Name and embedded image of each figure file."""
    return [{"name": path.stem, "src": embed_png(path)} for path in figures]


def report_context(
    data: ReportData, *, figures: list[Path], links: dict[int, str], next_space: Path | None, caveats: list[str]
) -> dict[str, Any]:
    """Everything the template shows for one study."""
    return {
        "study": data.study,
        "generated": datetime.datetime.now().isoformat(timespec="seconds"),
        "storage": data.storage,
        "metric": data.metric,
        "better": "lower" if ascending(data.direction) else "higher",
        "direction": data.direction,
        "strategy": data.strategy,
        "pruner": data.pruner,
        "summary": data.summary,
        "savings": data.savings,
        "compute_unit": data.trials.attrs.get("compute_unit", "steps"),
        "baselines": data.baselines,
        "figures": figure_entries(figures),
        "columns": ["number", "state", "value", "steps", "tokens", "duration_s", *param_columns(data.trials), "reason"],
        "trials": data.trials.to_dict("records"),
        "links": links,
        "verdicts": data.verdicts.to_dict("records"),
        "interaction": f"Not estimated: {data.interaction_why}."
        if data.interaction is None
        else data.interaction.verdict,
        "confirmed": None if data.confirmed is None else data.confirmed.to_dict("records"),
        "comparisons": data.comparisons,
        "indistinguishable": any(not c.significant for c in data.comparisons[:1]),
        "recommendations": data.recommendations,
        "recommended": data.recommended,
        "next_space": str(next_space) if next_space else None,
        "space_path": data.space.path if data.space else None,
        "caveats": caveats,
        "importance_why": "; ".join(data.importances.notes),
        "next_space_why": next((c for c in caveats if c.startswith("No narrowed")), "No narrowed search space."),
    }
