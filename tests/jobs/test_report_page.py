"""The run report's and the evaluation's pages from small hand-made report data (tests/reportdata.py): no
Spark, no browser (tests/e2e/test_report_browser.py opens them in one). Section order, where the rows went,
whole-number axes, rejections as a table, the one line that replaces an empty section, model text shown as
text, the self-contained copy, and the Markdown the evaluation page is made from."""

from __future__ import annotations

import base64
import re
import shutil

import pytest

from tests import reportdata
from cleancurate.jobs.curation import reportpage
from cleancurate.jobs.curation.report import write_report
from cleancurate.jobs.reporting import esc, markdown_html, write_pages


def h2s(page: str) -> list[str]:
    return re.findall(r"<h2 id='[^']*'>([^<]*)</h2>", page)


def section(page: str, anchor: str) -> str:
    """The HTML of one h2 section, up to the next h2."""
    start = page.index(f"<h2 id='{anchor}'>")
    end = page.find("<h2 ", start + 1)
    return page[start:end if end > 0 else None]


@pytest.fixture
def revised(tmp_path):
    path = write_report(reportdata.curation_data(revised=True), tmp_path / "report", timings={"rounds": 100.0})
    return path, path.read_text(encoding="utf-8")


def test_the_reader_view_comes_first_then_run_health_increments_and_tuning(revised):
    _, page = revised
    assert h2s(page) == ["What a reader gets", "Run health", "Increments", "Tuning"]
    reader = section(page, "reader")
    h3 = re.findall(r"<h3>([^<]*)</h3>", reader)
    assert h3 == ["Where the rows went", "Revisions side by side (seeded random sample)", "Originals kept, and why",
                  "What the safety screen kept out", "Rows that could not be used (quarantine)"]
    assert "<img" not in reader and page.index("<img") > page.index("id='health'")  # no plot before the reader's view
    assert "<b>2 revised</b>" in reader and "<b>4 kept their original</b>" in reader
    # the gate's verdict beside each revision, the harm score beside what the screen kept out
    assert reader.count("<b>passed every gate rule</b>") == 2 and "harm 0.120 → 0.030" in reader
    assert "other candidates rejected: retention ×3, meta_text ×1" in reader
    screen = reader.split("What the safety screen kept out")[1].split("<h3>")[0]
    assert "u01" in screen and "0.970" in screen and screen.index("0.970") < screen.index("0.810")
    tuning = section(page, "tuning")
    assert "ppl_distribution.png" in tuning and "Largest perplexity drops" in tuning


def test_where_the_rows_went_adds_up():
    rows = reportpage.outcome_rows(reportdata.curation_data(revised=True))
    got = {what: n for what, n, _ in rows}
    assert got["input rows"] == 40 == (got["quarantined at validation (unusable rows)"]
                                       + got["kept out by the safety screen"] + got["rows in the training mix (mix)"])
    assert got["selected for curation"] == 6 == sum(n for what, n, _ in rows
                                                    if what.startswith(("revised", "kept the original", "quarantined during")))
    assert got["kept the original: no revision passed the gate"] == 3
    assert got["kept the original: the only revisions close to it were near-copies of the original"] == 1


def _ticks(ax, axis: str) -> list[float]:
    lo, hi = sorted(getattr(ax, f"get_{axis}lim")())
    return [t for t in getattr(ax, f"get_{axis}ticks")() if lo - 1e-9 <= t <= hi + 1e-9]


def test_round_and_document_axes_tick_at_whole_numbers():
    import matplotlib.pyplot as plt

    figs = reportpage.figures(reportdata.curation_data(revised=True))
    assert list(figs) == ["docs_active_per_round", "time_per_round", "median_ppl_per_round", "gate_decisions",
                          "ppl_distribution"]
    counted = {"docs_active_per_round": "xy", "time_per_round": "x", "median_ppl_per_round": "x",
               "gate_decisions": "x", "ppl_distribution": "y"}
    for name, axes in counted.items():
        ax = figs[name].axes[0]
        figs[name].canvas.draw()
        for axis in axes:
            ticks = _ticks(ax, axis)
            assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks), (name, axis, ticks)
    for fig in figs.values():
        plt.close(fig)


def test_rejections_read_out_per_rule_and_round_not_json(revised):
    data = reportdata.curation_data(revised=True)
    frame = reportpage.rejections_table(data["stats"])
    assert list(frame.columns) == ["rule", "round 1", "round 2", "total"]  # round 0 rejected nothing
    assert frame.iloc[0].tolist() == ["retention", 14, 6, 20]
    assert dict(zip(frame.rule, frame.total)) == {"retention": 20, "lost_content": 2, "similarity": 2, "echo": 1,
                                                  "meta_text": 1}
    _, page = revised
    assert "reject_counts_json" not in page and "{&quot;" not in page and '{"' not in page
    assert "<th>rejected: retention</th>" not in page  # one table per rule and round, not a column per rule


def test_a_run_without_revisions_says_why_instead_of_empty_sections(tmp_path):
    folder = tmp_path / "report"
    write_report(reportdata.curation_data(revised=True), folder)
    assert (folder / "ppl_distribution.png").is_file()
    page = write_report(reportdata.curation_data(revised=False), folder).read_text(encoding="utf-8")
    assert not (folder / "ppl_distribution.png").exists()  # the earlier build's plot would contradict the page
    assert sorted(p.name for p in folder.glob("*.png")) == ["docs_active_per_round.png", "gate_decisions.png",
                                                            "median_ppl_per_round.png", "time_per_round.png"]
    revisions = page.split("Revisions side by side (seeded random sample)</h3>")[1].split("<h3>")[0]
    assert revisions.strip() == "<p class='empty'>No revision replaced its original in this run.</p>"
    tuning = section(page, "tuning")
    assert "ppl_distribution" not in tuning and "Largest perplexity drops" not in tuning
    assert "No revision replaced its original, so every curated perplexity is the original&#x27;s" in tuning


def test_a_run_that_curated_nothing_has_a_line_for_every_section(tmp_path):
    data = reportdata.curation_data(revised=False, increments=0)
    for name in ("ppl", "gate", "median", "stats", "examples", "reader", "kept", "quarantine", "screen_out"):
        data[name] = data[name].iloc[0:0]
    data["screened"] = data["screen_scored"] = 0
    page = write_report(data, tmp_path / "report").read_text(encoding="utf-8")
    assert "<img" not in page and list(tmp_path.joinpath("report").glob("*.png")) == []
    for line in ("No document was curated in this run, so there is no revision to show.",
                 "The safety screen scored no original in this run", "No row was quarantined.",
                 "No round ran: no document was selected for curation.", "No increment is recorded",
                 "No candidate was generated in this run, so the gate decided nothing."):
        assert line in page, line


def test_model_text_is_shown_as_text_never_as_markup(revised):
    _, page = revised
    assert "<script" not in page and reportdata.MARKUP not in page
    assert esc(reportdata.MARKUP) in page


def test_the_increments_have_their_own_section(revised):
    _, page = revised
    inc = section(page, "increments")
    assert "2 increment(s), oldest first" in inc
    rows = re.findall(r"<tr><td class='n'>(\d)</td><td>complete</td><td>([a-z_]+)</td>", inc)
    assert rows == [("0", "full"), ("1", "change_feed")]
    assert "<td class='nw'>2026-12-02 10:00:00</td>" in inc


def test_the_standalone_page_carries_every_figure_inline(revised, tmp_path):
    path, page = revised
    alone = (path.parent / "report-standalone.html").read_text(encoding="utf-8")
    srcs = re.findall(r"<img src='([^']+)'", page)
    assert len(srcs) == 5 and all(s.endswith(".png") for s in srcs)
    inlined = re.findall(r"<img src='data:image/png;base64,([^']+)'", alone)
    assert [base64.b64decode(d) for d in inlined] == [(path.parent / s).read_bytes() for s in srcs]
    assert ".png'" not in alone  # no figure left to fetch from the folder
    # without the option the copy is not written, and a stale one is removed
    moved = tmp_path / "again"
    shutil.copytree(path.parent, moved)
    write_pages(page, moved, "report", standalone=False)
    assert not (moved / "report-standalone.html").exists()


def test_markdown_subset_renders_tables_images_and_escapes():
    html = markdown_html("# Evaluation e1\n\nA **bold** and *italic* `code`, a \\| bar, &amp; <b>tag</b>.\n\n"
                         "| mix | answer |\n|---|---|\n| A | x \\| y &lt;z&gt; |\n| B | *failed: boom* |\n\n"
                         "![metrics per mix](evaluation.png)\n\n## Results (95% intervals)\n")
    assert "<h1 id='evaluation-e1'>Evaluation e1</h1>" in html
    assert ("<p>A <b>bold</b> and <i>italic</i> <code>code</code>, a | bar, &amp; &lt;b&gt;tag&lt;/b&gt;.</p>"
            in html)
    assert ("<thead><tr><th>mix</th><th>answer</th></tr></thead><tbody><tr><td>A</td><td>x | y &lt;z&gt;</td></tr>"
            "<tr><td>B</td><td><i>failed: boom</i></td></tr></tbody>") in html
    assert "<img src='evaluation.png' alt='metrics per mix'>" in html
    assert "<h2 id='results-95-intervals'>Results (95% intervals)</h2>" in html


def test_the_evaluation_page_is_its_markdown_with_the_charts(tmp_path):
    from cleancurate import config as C
    from cleancurate.jobs.evaluation.report import write_eval_report

    md = write_eval_report(reportdata.evaluation_data(), tmp_path, C.load_evaluation("eval-small"), "eval-00aa11bb22cc",
                           "run-0123456789ab")
    text = md.read_text(encoding="utf-8")
    page = (tmp_path / "evaluation.html").read_text(encoding="utf-8")
    assert h2s(page) == ["Mixes", "Results (95% bootstrap intervals, n = prompts scored)",
                         "Example answers side by side"]
    assert page.count("<table") == sum(line.startswith("|---") for line in text.splitlines()) == 5
    assert re.findall(r"<img src='([^']+)'", page) == ["evaluation.png", "evaluation_differences.png",
                                                        "evaluation_stages.png"]
    assert "Write a mean joke | about a neighbour." in page and "<script" not in page
    assert "<td>before</td><td>curated: 2 rows, 1 steps, loss 3.20 → 3.10</td>" in page
    alone = (tmp_path / "evaluation-standalone.html").read_text(encoding="utf-8")
    assert alone.count("<img src='data:image/png;base64,") == 3



def test_each_page_attached_to_mlflow_is_its_own_files_not_the_other_pages_beside_it(tmp_path):
    """The curation's report and the evaluation's share a folder; what each job attaches (page_files) is
    its page, the standalone copy, its Markdown and exactly the images the page shows."""
    from cleancurate import config as C
    from cleancurate.jobs.evaluation.report import write_eval_report
    from cleancurate.jobs.reporting import page_files

    report = write_report(reportdata.curation_data(revised=True), tmp_path, timings={"rounds": 100.0})
    md = write_eval_report(reportdata.evaluation_data(), tmp_path, C.load_evaluation("eval-small"), "eval-00aa11bb22cc",
                           "run-0123456789ab")
    shown = re.findall(r"<img src='([^']+)'", report.read_text(encoding="utf-8"))
    assert shown and [p.name for p in page_files(report)] == ["report.html", "report-standalone.html"] + shown
    assert [p.name for p in page_files(md)] == ["evaluation.html", "evaluation-standalone.html", "evaluation.md",
                                                "evaluation.png", "evaluation_differences.png", "evaluation_stages.png"]
    every = {p.name for p in tmp_path.iterdir()}
    assert {p.name for p in page_files(report)} | {p.name for p in page_files(md)} == every  # nothing else, nothing left


def test_report_standalone_decides_the_self_contained_copy():
    from types import SimpleNamespace

    from cleancurate import config as C
    from cleancurate.jobs.curation.report import standalone_default

    assert standalone_default(C.load("demo")) is True  # on unless report.standalone says otherwise
    assert standalone_default(SimpleNamespace(report=SimpleNamespace(standalone=False))) is False
