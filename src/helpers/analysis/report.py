"""``reports/index.html``: every figure and table of the build on one page, in the order of the paper.

The page opens with a summary (what was regenerated, the check of the paper's legends, the headline
concept-level slopes, the misalignment degrees, each study's headline fit), then follows the paper (Udandarao
et al. 2024): zero-shot classification (with the log-linear fits), retrieval, text-to-image, the threshold
ablation, the controls, the long tail, misalignment, Let It Wag!; then the user's studies and the study's
controls run on the user's corpus (similarity control, built Let It Wag!-style set); then the pages of
each corpus and tagger; then the synthetic world. Figure folders the page does not know come last, before
the tables, so nothing is ever left out.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from helpers.analysis.studies.run import headline, read_fits_csv, read_study_fits

MAX_TABLE_ROWS = 60  # longer tables are linked and previewed, not inlined whole

#: figure folders of the paper's sections, in the paper's order, with their headings
PAPER_SECTIONS: tuple[tuple[str, str], ...] = (
    ("zero_shot", "Zero-shot classification"),
    ("fits", "Log-linear fits: concept-level slopes and the number of bins"),
    ("retrieval", "Retrieval"),
    ("t2i", "Text-to-image generation"),
    ("thresholds", "Threshold ablation"),
    ("controls", "Controls"),
    ("long_tail", "The long tail of concept frequencies"),
    ("misalignment", "Image-text misalignment"),
    ("let_it_wag", "Let It Wag!"),
)
CORPUS_FOLDERS = ("text_search", "image_search")  # figures/<folder>/<corpus>: one page per corpus
TAGGER_FOLDERS = ("tagger", "train_clip")  # figures/tagger/<name>, figures/train_clip
SYNTHETIC_FOLDERS = ("synthetic_world", "synthetic")
#: tables inlined beside a synthetic-world folder's figures (the corrected fits: raw vs corrected vs true slope)
SYNTHETIC_NOTES = {"synthetic": ("synthetic_corrected_fits.csv",)}
STUDIES = "studies"
#: the study's controls run on the user's corpus (figures/<folder>), with the tables summarised in their notes
CONTROL_SECTIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("controls_similarity", "Sample-similarity control",
     ("controls_similarity/summary.csv", "controls_similarity/leak_recall.csv")),
    ("let_it_wag_build", "Let It Wag!-style test set", ("let_it_wag_build/selection.csv", "let_it_wag_user_models.csv")),
)  # fmt: skip
HEADLINE_COUNT_TYPE = "integrated_tlemmatized_i0.7"  # the paper's main (matched, t=0.7) counts

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6rem; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2rem; margin-top: 2.2rem; }
figure { margin: 1rem 0 2rem; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: .9rem; color: #555; }
table { border-collapse: collapse; font-size: .8rem; margin: .5rem 0 1.5rem; }
td, th { border: 1px solid #ddd; padding: 2px 6px; text-align: right; } th { background: #f4f4f4; }
nav a { margin-right: 1rem; } .summary li { margin: .3rem 0; }
"""


def _title(name: str) -> str:
    return name.replace("_", " ").replace("-", " ").strip().capitalize()


def _esc(text: object) -> str:
    return html.escape(str(text))


def _figure(reports: Path, fig: Path) -> str:
    rel = fig.relative_to(reports).as_posix()
    pdf = fig.with_suffix(".pdf")
    link = f" (<a href='{_esc(pdf.relative_to(reports).as_posix())}'>PDF</a>)" if pdf.exists() else ""
    return f"<figure><img src='{_esc(rel)}' alt='{_esc(fig.stem)}'><figcaption>{_esc(fig.stem)}{link}</figcaption></figure>"


def _table(df: pd.DataFrame) -> str:
    return df.head(MAX_TABLE_ROWS).to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0)


def _read_csv(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path, keep_default_na=False, na_values=[""]) if path.is_file() else None


def _task_order(fig: Path) -> tuple[int, str]:
    """A study's figures in the paper's order: zero-shot, then retrieval, then the rest."""
    return (0 if "zero_shot" in fig.stem else 1 if "retrieval" in fig.stem else 2, fig.stem)


def _truth_studies(tables: Path) -> set[str]:
    """Studies with true counts (a synthetic world): shown with the world, not with the user's studies."""
    out = set()
    for fits in sorted(tables.glob(f"{STUDIES}/*/fits.csv")):
        if "true" in set(read_fits_csv(fits)["count_type"]):
            out.add(fits.parent.name)
    return out


# ------------------------------------------------------------------------------------------------ summary


def _study_headline(tables: Path) -> pd.DataFrame | None:
    fits = read_study_fits(tables)
    return None if fits.empty else headline(fits)


def summary(reports: Path, sections: Iterable[tuple[str, str, int]]) -> list[str]:
    """The opening summary: what was regenerated (``sections``: id, heading, figures), the legend check, the
    headline slopes (zero-shot, class prompts, matched counts at t=0.7, zeros as 1), the misalignment degrees
    and each study's headline fit. A table a stage has not written yet is named as missing."""
    tables = reports / "tables"
    parts = ["<h2 id='summary'>Summary</h2><ul class='summary'>"]
    done = [f"{_esc(heading)} ({n} figure{'s' if n != 1 else ''})" for _, heading, n in sections if n]
    parts.append(f"<li><b>Regenerated:</b> {'; '.join(done) if done else 'no figures yet'}.</li>")
    legends = _read_csv(tables / "paper_legend_check.csv")
    if legends is not None and len(legends):
        n_ok = int(legends["matches"].astype(str).str.lower().eq("true").sum())
        parts.append(
            f"<li><b>Legend check:</b> {n_ok} of {len(legends)} binned r values printed in the legends of the "
            "authors' zero-shot figures are reproduced at two decimals (<code>paper_legend_check.csv</code>).</li>"
        )
    else:
        parts.append("<li><b>Legend check:</b> not run yet (stage <code>log_linear_fits</code>).</li>")
    parts.append("</ul>")
    path = tables / "log_linear_fits.csv"
    fits = read_fits_csv(path) if path.is_file() else None
    if fits is not None:
        head = fits[
            (fits["task"] == "zero_shot") & (fits["prompt"] == "class") & (fits["zero_rule"] == "to_one")
            & (fits["count_type"] == HEADLINE_COUNT_TYPE)
        ]  # fmt: skip
        if len(head):
            parts.append(
                "<h3>Headline concept-level slopes</h3><p>Zero-shot top-1 accuracy points per decade of matched "
                "frequency (t=0.7, class prompts, zeros as 1), with bootstrap 95% CIs and the authors' binned r.</p>"
            )
            cols = ["pretrain", "model", "n_rows", "slope_per_decade", "slope_ci_low", "slope_ci_high",
                    "concept_pearson_r", "binned_r"]  # fmt: skip
            parts.append(_table(head[cols]))
    mis = _read_csv(tables / "misalignment.csv")
    if mis is not None and len(mis):
        parts.append("<h3>Misalignment degrees</h3><p>Share of image-text pairs whose caption and image concepts "
                     "are disjoint (the paper's Table 3).</p>")  # fmt: skip
        parts.append(_table(mis))
    studies = _study_headline(tables)
    if studies is not None and len(studies):
        parts.append("<h3>Studies: headline fits</h3><p>Per study, model and count type: the zero-shot fit of the "
                     "first prompt set (else the first retrieval metric), zeros as 1.</p>")  # fmt: skip
        parts.append(_table(studies))
    return parts


# ------------------------------------------------------------------------------------------------- page


def _coverage_note(tables: Path, study: str) -> str:
    coverage = _read_csv(tables / STUDIES / study / "coverage.csv")
    if coverage is None or coverage.empty:
        return ""
    first = coverage.drop_duplicates(["dataset", "task"])
    notes = []
    for row in first.itertuples():
        missing = f"; no count for: {_esc(row.unmatched)}" if row.n_unmatched else ""
        notes.append(f"{_esc(row.dataset)}: {row.n_matched} of {row.n_concepts} concepts counted{missing}")
    return "<p>Join (" + _esc(first["count_type"].iloc[0]) + " counts): " + "; ".join(notes) + ".</p>"


def _control_note(tables: Path, names: Iterable[str]) -> str:
    """The small tables of a control section, inlined (those that exist)."""
    parts = []
    for name in names:
        df = _read_csv(tables / name)
        if df is not None and len(df):
            parts.append(f"<p>{_esc(name)}</p>" + _table(df.head(MAX_TABLE_ROWS)))
    return "".join(parts)


def build_index(reports: Path, title: str, intro: str = "") -> Path:
    """Write ``reports/index.html`` (see the module docstring for its order); returns its path.

    Every PNG under figures/ appears once, every CSV under tables/ is linked and previewed
    (``MAX_TABLE_ROWS``).
    """
    figures_root, tables = reports / "figures", reports / "tables"
    figures = sorted(figures_root.rglob("*.png"))
    by_folder: dict[str, list[Path]] = {}
    for fig in figures:
        by_folder.setdefault(fig.parent.relative_to(figures_root).as_posix(), []).append(fig)
    used: set[str] = set()

    def take(prefix: str) -> list[Path]:
        """Figures of folder ``prefix`` and its sub-folders not shown yet."""
        out = []
        for folder, figs in by_folder.items():
            if (folder == prefix or folder.startswith(prefix + "/")) and folder not in used:
                used.add(folder)
                out.extend(figs)
        return sorted(out, key=_task_order) if prefix.startswith(STUDIES + "/") else out

    blocks: list[tuple[str, str, list[str], int]] = []  # (id, heading, html parts, figures)

    def block(section: str, heading: str, groups: list[tuple[str, list[Path], str]]) -> None:
        body, count = [], 0
        for sub, figs, note in groups:
            if not figs:
                continue
            if sub:
                body.append(f"<h3>{_esc(sub)}</h3>")
            body.append(note)
            body.extend(_figure(reports, f) for f in figs)
            count += len(figs)
        if count:
            blocks.append((section, heading, body, count))

    for section, heading in PAPER_SECTIONS:
        block(section, heading, [("", take(section), "")])
    truth = _truth_studies(tables)
    studies = sorted({f.split("/")[1] for f in by_folder if f.startswith(STUDIES + "/")})
    user = [(s, take(f"{STUDIES}/{s}"), _coverage_note(tables, s)) for s in studies if s not in truth]
    block("studies", "Your studies", user)
    groups = [(heading, take(folder), _control_note(tables, notes)) for folder, heading, notes in CONTROL_SECTIONS]
    block("controls_yours", "The study's controls on your corpus", groups)
    corpora = sorted({f.split("/")[1] for f in by_folder if f.split("/")[0] in CORPUS_FOLDERS and "/" in f})
    block("corpora", "Corpora", [(c, [p for d in CORPUS_FOLDERS for p in take(f"{d}/{c}")], "") for c in corpora])
    taggers = sorted({f.split("/")[1] for f in by_folder if f.startswith("tagger/")})
    groups = [(f"Tagger {t}", take(f"tagger/{t}"), "") for t in taggers] + [("CLIP training", take("train_clip"), "")]
    block("taggers", "Taggers and trained models", groups)
    groups = [(_title(d), take(d), _control_note(tables, SYNTHETIC_NOTES.get(d, ()))) for d in SYNTHETIC_FOLDERS]
    groups += [(f"Study {s}", take(f"{STUDIES}/{s}"), _coverage_note(tables, s)) for s in sorted(truth)]
    block("synthetic_world", "The synthetic world", groups)
    for folder in sorted(by_folder):
        if folder not in used:
            block(folder.replace("/", "-"), _title(folder), [("", take(folder), "")])

    csvs = sorted(tables.rglob("*.csv"))
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_esc(title)}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{_esc(title)}</h1>",
    ]
    if intro:
        parts.append(f"<p>{_esc(intro)}</p>")
    parts.append(
        f"<p>Built {dt.datetime.now().strftime('%Y-%m-%d %H:%M')}: {len(figures)} figures, {len(csvs)} tables.</p>"
    )
    nav = [("summary", "Summary"), *((s, h) for s, h, _, _ in blocks), ("tables", "Tables")]
    parts.append("<nav>" + "".join(f"<a href='#{_esc(s)}'>{_esc(h)}</a>" for s, h in nav) + "</nav>")
    parts.extend(summary(reports, [(s, h, n) for s, h, _, n in blocks]))
    for section, heading, body, _ in blocks:
        parts.append(f"<h2 id='{_esc(section)}'>{_esc(heading)}</h2>")
        parts.extend(body)
    parts.append("<h2 id='tables'>Tables</h2>")
    for table in csvs:
        rel = table.relative_to(reports).as_posix()
        df = pd.read_csv(table)
        note = f" (first {MAX_TABLE_ROWS} of {len(df)} rows)" if len(df) > MAX_TABLE_ROWS else ""
        name = table.relative_to(tables).with_suffix("").as_posix()
        parts.append(f"<h3>{_esc(name)}</h3><p><a href='{_esc(rel)}'>{_esc(rel)}</a>{note}</p>")
        parts.append(_table(df))
    parts.append("</body></html>")
    out = reports / "index.html"
    out.write_text("\n".join(parts))
    return out
