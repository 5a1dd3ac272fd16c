"""helpers.analysis.report.build_index: every figure and table of a build on one page."""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from helpers.analysis import report  # noqa: E402


def _png(path: Path, pdf: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1], [0, 1])
    fig.savefig(path, dpi=20)
    if pdf:
        fig.savefig(path.with_suffix(".pdf"))
    plt.close(fig)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    reports = tmp_path_factory.mktemp("reports")
    _png(reports / "figures" / "zero_shot" / "cc3m_matched.png", pdf=True)
    _png(reports / "figures" / "zero_shot" / "cc12m_matched.png")
    _png(reports / "figures" / "let_it_wag" / "let_it_wag_vs_imagenet.png")
    _png(reports / "figures" / "let_it_wag" / "a<b>&c.png")  # a name that needs escaping
    tables = reports / "tables"
    tables.mkdir()
    pd.DataFrame({"model": ["m1", "m2"], "r": [0.123456, 0.9]}).to_csv(tables / "short_fits.csv", index=False)
    n_long = report.MAX_TABLE_ROWS + 15
    pd.DataFrame({"concept": [f"c{i}" for i in range(n_long)], "count": range(n_long)}).to_csv(
        tables / "long_counts.csv", index=False
    )
    out = report.build_index(reports, title="Report <draft> & co", intro="Made by <dvc repro>.")
    return reports, out.read_text()


def test_build_index_writes_index_html_in_the_reports_folder(built):
    reports, text = built
    assert (reports / "index.html").is_file()
    assert text.startswith("<!doctype html>") and text.rstrip().endswith("</html>")


def test_index_mentions_every_figure_path(built):
    reports, text = built
    for fig in (reports / "figures").rglob("*.png"):
        rel = fig.relative_to(reports).as_posix()
        assert f"src='{html.escape(rel)}'" in text, rel


def test_index_has_one_heading_per_figure_section(built):
    _, text = built
    assert "<h2 id='zero_shot'>Zero-shot classification</h2>" in text
    assert "<h2 id='let_it_wag'>Let It Wag!</h2>" in text
    assert "4 figures, 2 tables" in text


def test_index_links_the_pdf_only_where_one_exists(built):
    _, text = built
    assert "href='figures/zero_shot/cc3m_matched.pdf'" in text
    assert text.count(">PDF</a>") == 1


def test_index_shows_every_table_with_a_link(built):
    _, text = built
    for name in ("short_fits", "long_counts"):
        assert f"<h3>{name}</h3>" in text
        assert f"href='tables/{name}.csv'" in text


def test_long_table_is_truncated_with_a_note_and_short_table_is_not(built):
    _, text = built
    n_long = report.MAX_TABLE_ROWS + 15
    assert f"(first {report.MAX_TABLE_ROWS} of {n_long} rows)" in text
    assert text.count("(first ") == 1
    assert f"<td>c{report.MAX_TABLE_ROWS - 1}</td>" in text
    assert f"<td>c{report.MAX_TABLE_ROWS}</td>" not in text
    assert "<td>m2</td>" in text


def test_index_escapes_html_in_names_title_and_intro(built):
    _, text = built
    assert "a<b>&c" not in text
    assert "a&lt;b&gt;&amp;c" in text
    assert "<title>Report &lt;draft&gt; &amp; co</title>" in text
    assert "Made by &lt;dvc repro&gt;." in text


def test_build_index_on_an_empty_reports_folder(tmp_path):
    text = report.build_index(tmp_path, title="Empty").read_text()
    assert "0 figures, 0 tables" in text


def _fits(pretrain: str, count_type: str, slope: float) -> pd.DataFrame:
    from helpers.analysis.fits import FIT_COLUMNS

    row = dict.fromkeys(FIT_COLUMNS, 0.5)
    row.update(task="zero_shot", pretrain=pretrain, model="m", prompt="class", count_type=count_type, metric="top1",
               zero_rule="to_one", n_rows=10, n_bins_plotted=4, slope_per_decade=slope)  # fmt: skip
    return pd.DataFrame([row])


@pytest.fixture(scope="module")
def paper_ordered(tmp_path_factory) -> str:
    reports = tmp_path_factory.mktemp("ordered")
    for folder in ("controls", "let_it_wag", "zero_shot", "retrieval", "misalignment", "text_search/sample_tsv",
                   "image_search/sample_tsv", "tagger/sample", "synthetic", "synthetic_world", "studies/mine",
                   "studies/synthetic", "brand_new"):  # fmt: skip
        _png(reports / "figures" / folder / "f.png")
    tables = reports / "tables"
    (tables / "studies" / "mine").mkdir(parents=True)
    (tables / "studies" / "synthetic").mkdir(parents=True)
    _fits("mine", "text", 7.25).to_csv(tables / "studies" / "mine" / "fits.csv", index=False)
    _fits("synthetic", "true", 3.0).to_csv(tables / "studies" / "synthetic" / "fits.csv", index=False)
    pd.DataFrame({"dataset": ["cls"], "task": ["zero_shot"], "count_type": ["text"], "n_concepts": [3], "n_matched": [2],
                  "n_unmatched": [1], "unmatched": ["yak"]}).to_csv(tables / "studies" / "mine" / "coverage.csv", index=False)  # fmt: skip
    pd.concat([_fits("cc3m", "integrated_tlemmatized_i0.7", 4.5), _fits("mine", "text", 7.25)]).to_csv(
        tables / "log_linear_fits.csv", index=False
    )
    pd.DataFrame({"matches": [True, True, False]}).to_csv(tables / "paper_legend_check.csv", index=False)
    pd.DataFrame({"pretrain": ["cc3m"], "misaligned_samples": [5], "degree_extracted_size": [0.16],
                  "degree_fixed_size": [0.14]}).to_csv(tables / "misalignment.csv", index=False)  # fmt: skip
    return report.build_index(reports, title="t").read_text()


def test_the_page_opens_with_the_summary_and_follows_the_papers_order(paper_ordered):
    text = paper_ordered
    order = ["id='summary'", "id='zero_shot'", "id='retrieval'", "id='controls'", "id='misalignment'",
             "id='let_it_wag'", "id='studies'", "id='corpora'", "id='taggers'", "id='synthetic_world'",
             "id='brand_new'", "id='tables'"]  # fmt: skip
    positions = [text.index(f"<h2 {key}") for key in order]
    assert positions == sorted(positions)
    assert "<h3>sample_tsv</h3>" in text and "<h3>Tagger sample</h3>" in text


def test_the_summary_holds_the_legend_check_slopes_misalignment_and_study_headlines(paper_ordered):
    summary = paper_ordered[paper_ordered.index("id='summary'") : paper_ordered.index("<h2 id='zero_shot'")]
    assert "2 of 3 binned r values" in summary
    assert "<td>4.5</td>" in summary  # the release's headline slope (matched counts, class prompts)
    assert "<td>0.16</td>" in summary  # the misalignment degree
    assert "<td>7.25</td>" in summary and "<td>mine</td>" in summary  # the study's headline fit


def test_a_study_with_true_counts_is_shown_with_the_synthetic_world(paper_ordered):
    text = paper_ordered
    studies = text[text.index("<h2 id='studies'") : text.index("<h2 id='corpora'")]
    world = text[text.index("<h2 id='synthetic_world'") : text.index("<h2 id='brand_new'")]
    assert "figures/studies/mine/f.png" in studies and "no count for: yak" in studies
    assert "figures/studies/synthetic/f.png" in world and "figures/studies/synthetic/f.png" not in studies


def test_the_controls_on_your_corpus_follow_your_studies_with_their_tables(tmp_path):
    for folder in ("studies/mine", "controls_similarity", "let_it_wag_build", "synthetic_world"):
        _png(tmp_path / "figures" / folder / "f.png")
    tables = tmp_path / "tables" / "controls_similarity"
    tables.mkdir(parents=True)
    pd.DataFrame({"similarity_threshold": [0.85], "recall": [0.975]}).to_csv(tables / "leak_recall.csv", index=False)
    text = report.build_index(tmp_path, title="t").read_text()
    order = ["id='studies'", "id='controls_yours'", "id='synthetic_world'"]
    positions = [text.index(f"<h2 {key}") for key in order]
    assert positions == sorted(positions)
    section = text[positions[1] : positions[2]]
    assert "<h3>Sample-similarity control</h3>" in section and "<h3>Let It Wag!-style test set</h3>" in section
    assert "<td>0.975</td>" in section  # the leak recall, inlined beside the figures


def test_the_corrected_fits_are_shown_with_the_synthetic_worlds_figures(tmp_path):
    _png(tmp_path / "figures" / "synthetic" / "corrected_fits.png")
    (tmp_path / "tables").mkdir()
    fits = pd.DataFrame({"image_corpus": ["synthetic_clip"], "raw_slope": [3.125], "corrected_slope": [4.875]})
    fits.to_csv(tmp_path / "tables" / "synthetic_corrected_fits.csv", index=False)
    text = report.build_index(tmp_path, title="t").read_text()
    world = text[text.index("<h2 id='synthetic_world'") : text.index("<h2 id='tables'")]
    assert "figures/synthetic/corrected_fits.png" in world
    assert "synthetic_corrected_fits.csv" in world and "<td>4.875</td>" in world  # inlined beside the figure
