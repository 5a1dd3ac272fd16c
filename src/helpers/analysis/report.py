"""``reports/index.html``: every figure and table of the build on one page."""

from __future__ import annotations

import datetime as dt
import html
from pathlib import Path

import pandas as pd

MAX_TABLE_ROWS = 60  # longer tables are linked and previewed, not inlined whole

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2rem; margin-top: 2.2rem; }
figure { margin: 1rem 0 2rem; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .9rem; color: #555; }
table { border-collapse: collapse; font-size: .8rem; margin: .5rem 0 1.5rem; }
td, th { border: 1px solid #ddd; padding: 2px 6px; text-align: right; } th { background: #f4f4f4; }
nav a { margin-right: 1rem; }
"""


def _title(name: str) -> str:
    return name.replace("_", " ").replace("-", " ").strip().capitalize()


def build_index(reports: Path, title: str, intro: str = "") -> Path:
    """Write ``reports/index.html`` linking every figure under figures/ and every CSV under tables/."""
    figures = sorted((reports / "figures").rglob("*.png"))
    tables = sorted((reports / "tables").rglob("*.csv"))
    sections: dict[str, list[Path]] = {}
    for fig in figures:
        sections.setdefault(fig.parent.relative_to(reports / "figures").as_posix(), []).append(fig)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
    ]
    if intro:
        parts.append(f"<p>{html.escape(intro)}</p>")
    parts.append(
        f"<p>Built {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}: {len(figures)} figures, {len(tables)} tables.</p>"
    )
    parts.append(
        "<nav>"
        + "".join(f"<a href='#{html.escape(s)}'>{html.escape(_title(s))}</a>" for s in sections)
        + "<a href='#tables'>Tables</a></nav>"
    )
    for section, figs in sections.items():
        parts.append(f"<h2 id='{html.escape(section)}'>{html.escape(_title(section))}</h2>")
        for fig in figs:
            rel = fig.relative_to(reports).as_posix()
            pdf = fig.with_suffix(".pdf")
            link = f" (<a href='{html.escape(pdf.relative_to(reports).as_posix())}'>PDF</a>)" if pdf.exists() else ""
            parts.append(
                f"<figure><img src='{html.escape(rel)}' alt='{html.escape(fig.stem)}'>"
                f"<figcaption>{html.escape(fig.stem)}{link}</figcaption></figure>"
            )
    parts.append("<h2 id='tables'>Tables</h2>")
    for table in tables:
        rel = table.relative_to(reports).as_posix()
        df = pd.read_csv(table)
        note = f" (first {MAX_TABLE_ROWS} of {len(df)} rows)" if len(df) > MAX_TABLE_ROWS else ""
        parts.append(
            f"<h3>{html.escape(table.stem)}</h3><p><a href='{html.escape(rel)}'>{html.escape(rel)}</a>{note}</p>"
        )
        parts.append(df.head(MAX_TABLE_ROWS).to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0))
    parts.append("</body></html>")
    out = reports / "index.html"
    out.write_text("\n".join(parts))
    return out
