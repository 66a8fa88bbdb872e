"""The reports as a reader sees them: each page opened in headless Chromium (Debian's ``chromium``, which
``.ci/run`` installs) at 1280 px, every image loaded, no script error or failed load, nothing wider than the
window, the sections in reading order. Screenshots of each page (first screen and whole page) are kept under
``out/test-artifacts/report-browser/``.

The curation report and the evaluation's page are rendered from small hand-made report data
(tests/reportdata.py) in a second; the shared run's report is rendered from its tables, and that test also
checks that the hand-made data has the real data's shape. Without Chromium every test here is skipped, and
the reason says so in the test summary.
"""

from __future__ import annotations

import numbers
import shutil
from pathlib import Path

import pandas as pd
import pytest

from tests import browser, reportdata

pytestmark = pytest.mark.skipif(not browser.available(), reason=browser.MISSING)

ARTIFACTS = Path(__file__).resolve().parents[2] / "out" / "test-artifacts" / "report-browser"
READING_ORDER = ["What a reader gets", "Run health", "Increments", "Tuning"]


def opened(page: Path, name: str) -> browser.PageCheck:
    """``page`` opened in Chromium, its screenshots kept as ``ARTIFACTS/name*.png``; fails on any broken image,
    script error, failed load or a page wider than the window."""
    check = browser.open_page(page, ARTIFACTS / name)
    print(f"screenshots: {check.screenshot} {check.full_screenshot}")
    assert check.images and not check.broken_images, check.broken_images
    assert not check.errors, check.errors
    assert check.width <= 1280, f"the page is {check.width} px wide: it scrolls sideways at 1280 px"
    assert check.screenshot.stat().st_size > 20_000 and check.full_screenshot.stat().st_size > 50_000
    return check


def alone(page: Path, tmp_path: Path) -> Path:
    """The self-contained copy of ``page``, moved into an empty folder of its own."""
    folder = tmp_path / f"mailed-{page.stem}"
    folder.mkdir()
    return Path(shutil.copy(page.with_name(f"{page.stem}-standalone.html"), folder))


def h2(check: browser.PageCheck) -> list[str]:
    return [text for tag, text in check.headings if tag == "h2"]


@pytest.mark.parametrize("revised", [True, False], ids=["revisions", "no-revision"])
def test_the_curation_report_loads_in_a_browser_with_the_reader_view_first(tmp_path, revised):
    from cleancurate.jobs.curation.report import write_report

    data = reportdata.curation_data(revised=revised)
    page = write_report(data, tmp_path / "report", timings={"prepare": 3.0, "rounds": 105.7})
    check = opened(page, f"curation-{'revisions' if revised else 'no-revision'}")
    assert h2(check) == READING_ORDER
    assert check.headings[2] == ("h3", "Where the rows went")
    assert check.title == f"cleancurate report {data['run_id']}"  # the revision's <script> text did not run
    assert [i["src"] for i in check.images] == (["docs_active_per_round.png", "time_per_round.png",
                                                 "median_ppl_per_round.png", "gate_decisions.png"]
                                                + (["ppl_distribution.png"] if revised else []))
    mailed = opened(alone(page, tmp_path), f"curation-{'revisions' if revised else 'no-revision'}-standalone")
    assert len(mailed.images) == len(check.images) and all(i["src"].startswith("data:image/png;base64,")
                                                           for i in mailed.images)
    assert [i["naturalWidth"] for i in mailed.images] == [i["naturalWidth"] for i in check.images]


def test_the_evaluation_page_loads_in_a_browser(tmp_path):
    from cleancurate import config as C
    from cleancurate.jobs.evaluation.report import write_eval_report

    md = write_eval_report(reportdata.evaluation_data(), tmp_path / "report", C.load_evaluation("eval-small"),
                           "eval-00aa11bb22cc", "run-0123456789ab")
    check = opened(md.with_suffix(".html"), "evaluation")
    assert h2(check) == ["Mixes", "Results (95% bootstrap intervals, n = prompts scored)",
                         "Example answers side by side"]
    assert [i["src"] for i in check.images] == ["evaluation.png", "evaluation_differences.png",
                                                "evaluation_stages.png"]
    assert all(i["naturalWidth"] > 400 for i in check.images)
    mailed = opened(alone(md.with_suffix(".html"), tmp_path), "evaluation-standalone")
    assert [i["naturalWidth"] for i in mailed.images] == [i["naturalWidth"] for i in check.images]


def _shape(data: dict) -> dict:
    """Each entry's kind: a frame's columns, a Series' index, a dict's keys, else the type's name."""
    def kind(v):
        if isinstance(v, pd.DataFrame):
            return ("frame", tuple(v.columns))
        if isinstance(v, pd.Series):
            return ("series", tuple(sorted(v.index)))
        if isinstance(v, dict):
            return ("dict", tuple(sorted(v)))
        return ("number",) if isinstance(v, numbers.Number) else (type(v).__name__,)
    return {k: kind(v) for k, v in data.items()}


@pytest.mark.spark
@pytest.mark.model
def test_the_shared_runs_report_loads_in_a_browser(spark, curation_run, tmp_path):
    """The report of the session's real run, from its tables: the same checks; and the hand-made data the
    other tests render has the shape report_data returns."""
    from cleancurate.jobs.curation.report import report_data, write_report

    run = curation_run
    data = report_data(spark, run.store.output.path, run.run_id)
    assert _shape(data) == _shape(reportdata.curation_data())
    page = write_report(data, tmp_path / "report")
    check = opened(page, "curation-shared-run")
    assert h2(check) == READING_ORDER
    revised = int(data["ppl"].improved.sum())
    assert ("ppl_distribution.png" in [i["src"] for i in check.images]) == (revised > 0)
    opened(alone(page, tmp_path), "curation-shared-run-standalone")
