"""Build the report: read the live tables, compute, and write `report.html` and `report.pptx`."""

from __future__ import annotations

from pathlib import Path

from recsys_assets.contract.settings import Settings
from recsys_assets.tools.report.contents import assemble
from recsys_assets.tools.report.deck import write_deck
from recsys_assets.tools.report.inputs import DEFAULT_ROADMAP, load_inputs
from recsys_assets.tools.report.page import render_html

HTML_NAME, DECK_NAME = "report.html", "report.pptx"


def build_report(
    settings: Settings, out_dir: str | Path, api_url: str | None = None, roadmap: Path | None = DEFAULT_ROADMAP
) -> tuple[Path, Path]:
    """Read the live tables and write `<out_dir>/report.html` and `<out_dir>/report.pptx`; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = assemble(load_inputs(settings, api_url=api_url, roadmap=roadmap))
    html_path, deck_path = out / HTML_NAME, out / DECK_NAME
    html_path.write_text(render_html(report), encoding="utf-8")
    write_deck(report, deck_path)
    return html_path, deck_path
