"""The report as a slide deck (.pptx, python-pptx): the same numbers as the HTML, one topic per slide."""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
from pptx import Presentation
from pptx.util import Emu, Inches, Pt

from recsys_assets.tools.report.contents import Report
from recsys_assets.tools.report.page import cell_text

TITLE_ONLY = 5
WIDTH, HEIGHT = Inches(13.333), Inches(7.5)
MARGIN = Inches(0.5)
MAX_ROWS = 12


def _slide(prs: Presentation, title: str):  # type: ignore[no-untyped-def]
    slide = prs.slides.add_slide(prs.slide_layouts[TITLE_ONLY])
    slide.shapes.title.text = title
    return slide


def _table(slide, rows: list[list[str]], left, top, width, font: int = 12) -> None:  # type: ignore[no-untyped-def]
    shape = slide.shapes.add_table(len(rows), len(rows[0]), left, top, width, Inches(0.3) * len(rows))
    for r, row in enumerate(rows):
        for c, text in enumerate(row):
            cell = shape.table.cell(r, c)
            cell.text = text
            for paragraph in cell.text_frame.paragraphs:
                for run in paragraph.runs:
                    run.font.size = Pt(font)


def _frame_rows(frame: pd.DataFrame) -> list[list[str]]:
    head = [str(c) for c in frame.columns]
    body = [
        [cell_text(str(c), v) for c, v in zip(frame.columns, row, strict=True)] for row in frame.itertuples(index=False)
    ]
    return [head, *body[:MAX_ROWS]]


def _bullets(slide, lines: list[str], left, top, width, height, size: int = 16) -> None:  # type: ignore[no-untyped-def]
    frame = slide.shapes.add_textbox(left, top, width, height).text_frame
    frame.word_wrap = True
    for n, line in enumerate(lines):
        paragraph = frame.paragraphs[0] if n == 0 else frame.add_paragraph()
        paragraph.text = line
        paragraph.font.size = Pt(size)


def _picture(slide, png: bytes | None, left, top, width) -> None:  # type: ignore[no-untyped-def]
    if png is not None:
        slide.shapes.add_picture(io.BytesIO(png), left, top, width=width)


def write_deck(report: Report, path: str | Path) -> None:
    prs = Presentation()
    prs.slide_width, prs.slide_height = WIDTH, HEIGHT
    body_top, full = Inches(1.4), WIDTH - 2 * MARGIN
    half = Emu((full - MARGIN) // 2)

    title = prs.slides.add_slide(prs.slide_layouts[0])
    title.shapes.title.text = "Recommendation platform: final report"
    title.placeholders[1].text = f"Built {report.built_at}\nServing champion: {report.champion_label}"

    met = sum(k.met is True for k in report.kpis)
    judged = sum(k.met is not None for k in report.kpis)
    slide = _slide(prs, f"KPIs against the targets: {met} of {judged} met")
    rows = [["KPI", "value", "target", "status"], *([k.name, k.text, k.target, k.status] for k in report.kpis)]
    _table(slide, rows, MARGIN, body_top, full, font=12)

    slide = _slide(prs, "Model comparison (temporal protocol, K = 10)")
    if not report.models.empty:
        _table(slide, _frame_rows(report.models), MARGIN, body_top, half, font=10)
    _picture(slide, report.plots.get("models"), MARGIN + half + MARGIN, body_top, half)

    slide = _slide(prs, "Online A/B: CTR and conversion per arm")
    if not report.arms.empty:
        _table(slide, _frame_rows(report.arms), MARGIN, body_top, half, font=10)
    _picture(slide, report.plots.get("ctr"), MARGIN + half + MARGIN, body_top, half)

    d = report.drift
    slide = _slide(prs, "Drift and retrains")
    statuses = ", ".join(f"{n} {s.lower()}" for s, n in d.retrains_by_status.items()) or "none"
    lines = [
        f"Live windows compared: {d.windows}; with drift: {d.drifted}",
        f"Latest window: {d.latest}",
        f"Retrain runs: {d.retrains} ({statuses}); promoted: {d.promoted}",
    ]
    _bullets(slide, lines, MARGIN, body_top, half, Inches(2))
    _picture(slide, report.plots.get("drift"), MARGIN + half + MARGIN, body_top, half)

    slide = _slide(prs, "Cost drivers: data, training time, artifacts")
    _table(slide, _frame_rows(report.cost), MARGIN, body_top, half, font=10)
    _picture(slide, report.plots.get("training"), MARGIN + half + MARGIN, body_top, half)

    slide = _slide(prs, "Roadmap: open items")
    _bullets(slide, report.roadmap or ["no roadmap file found"], MARGIN, body_top, full, Inches(5.5), size=14)
    prs.save(str(path))
