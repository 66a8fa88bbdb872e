"""Incremental runs through Spark with the fake UDFs (no model): an output that follows its source.

Two scenarios, each a chain of job runs over one source that changes between them:

* a Delta table with its Change Data Feed on: the first run, a rerun of the unchanged
  source, the grown source without ``--incremental`` (an error), an increment killed after
  round 0 and resumed (with a second job refused while the first one's owner lives), then an
  increment whose starting version was removed from the table's log (the snapshot diff);
* a Parquet folder: the first run, increments whose input lost a column or changed a
  column's type (the errors of a full run, the output untouched), then the repaired folder
  with new, changed, deleted and bad rows.

At the end of each scenario the output's ``mix`` is compared with a fresh full run's on the same
source (doc_ids, ``source`` and text); after every increment its accounting is checked from the tables.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from cleancurate.jobs.curation.runrecord import utcnow
from tests import jobdata
from tests.jobs.test_curation_fakes import SCREENED, fake_config, fake_udfs

pytestmark = pytest.mark.spark

SCHEMA = "id string, query string, response string"
#: the corpus of the first increment: the fakes' good rows, the two rows the fake screen flags, two bad rows
FIRST = [r for r in jobdata.rows() if r[0] in {"g01", "g02", "g03", "g04", "g05", "g06", "b01", "b02"}
         and not (r[0] == "g01" and r[2].startswith("Put it"))] + SCREENED
NEW = [("n01", "How can I improve my sleep on weekends?", "Wake at the same hour as on weekdays and get light early."),
       ("n02", "Why does pasta stick together?", "Too little water or no stirring in the first two minutes.")]
CHANGED_G05 = ("g05", "What is a good first houseplant?", "A snake plant: it needs little light and little water.")


def config(src: str, out: str):
    """The fakes' configuration on ``src``, one round (what is under test is the increments, not ranking)."""
    return fake_config(src, out).with_overrides(["curation.rounds=1"])


def run(spark, src: str, out: str, **kw):
    from cleancurate.jobs.curation.stages import CurationJob

    events = []
    res = CurationJob(config(src, out), spark=spark, udfs=fake_udfs(), progress=events.append, **kw).run()
    return res, events


def table(spark, out: str, name: str) -> pd.DataFrame:
    return spark.read.format("delta").load(f"{out}/{name}").toPandas()


def mix_view(spark, out: str) -> list[tuple]:
    m = table(spark, out, "mix")
    return sorted(zip(m.doc_id, m.source, m.response))


def assert_mix_as_fresh(spark, src: str, out: str, fresh: str) -> None:
    """The incremental output's mix is the one a fresh full run on the same source writes."""
    res, _ = run(spark, src, fresh)
    assert res.complete and res.increment == 0
    assert mix_view(spark, out) == mix_view(spark, fresh)
    assert sorted(table(spark, out, "curated").doc_id) == sorted(table(spark, fresh, "curated").doc_id)


def assert_accounted(spark, out: str, source_rows: list[tuple]) -> None:
    """Live source rows = mix + quarantined at validation + screened out, and no table holds a gone document."""
    mix, q = table(spark, out, "mix"), table(spark, out, "quarantine")
    assert len(source_rows) == len(mix) + (q.stage == "validate").sum() + (q.stage == "screen").sum()
    live = {r[0] for r in source_rows if r[0] is not None}
    for name in ("docs", "mix", "curated", "rounds", "candidates"):
        assert set(table(spark, out, name).doc_id) <= live, name


def increments(spark, out: str) -> pd.DataFrame:
    return table(spark, out, "increments").sort_values("increment").set_index("increment")


def write_delta(spark, path: str, rows: list[tuple], cdf: bool) -> str:
    spark.createDataFrame(rows, SCHEMA).coalesce(1).write.format("delta").save(path)
    if cdf:
        spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES (delta.enableChangeDataFeed = true)")
    return path


def test_a_delta_source_with_its_change_feed_appends_changes_and_deletes_through_increments(spark, tmp_path):
    from delta.tables import DeltaTable

    from cleancurate.jobs.curation.increments import ConcurrentRunError, InputChangedError

    src, out = str(tmp_path / "src"), str(tmp_path / "out")
    write_delta(spark, src, FIRST, cdf=True)
    first, _ = run(spark, src, out)
    assert first.complete and first.increment == 0
    assert_accounted(spark, out, FIRST)
    inc = increments(spark, out)
    assert list(inc.index) == [0] and inc.loc[0, "read_via"] == "full" and inc.loc[0, "source_version"] == 1
    assert inc.loc[0, "docs_new"] == len(FIRST)  # the bad rows have ids too: every row is a key of its own
    mix_before = mix_view(spark, out)

    # the same source again: the stored result at once, nothing written
    again, events = run(spark, src, out, incremental=True)
    assert again.complete and again.increment == 0 and [e["event"] for e in events] == ["unchanged"]
    assert list(increments(spark, out).index) == [0] and mix_view(spark, out) == mix_before

    # the source changes: two rows appended, g05 rewritten, g03 and the bad row b01 deleted
    t = DeltaTable.forPath(spark, src)
    spark.createDataFrame(NEW, SCHEMA).write.format("delta").mode("append").save(src)
    t.update("id = 'g05'", {"response": f"'{CHANGED_G05[2]}'"})
    t.delete("id IN ('g03', 'b01')")
    now = [r for r in FIRST if r[0] not in {"g03", "b01", "g05"}] + [CHANGED_G05] + NEW
    # ... which a rerun without --incremental never answers with the old result
    with pytest.raises(InputChangedError, match=r"--incremental.*--new-run"):
        run(spark, src, out)
    assert mix_view(spark, out) == mix_before

    # an increment killed after round 0 ...
    stopped, events = run(spark, src, out, incremental=True, stop_after_round=0)
    assert not stopped.complete and stopped.increment == 1
    planned = next(e for e in events if e["event"] == "planned")
    assert (planned["read_via"], planned["new"], planned["changed"], planned["removed"]) == ("change_feed", 2, 1, 2)
    assert planned["unchanged"] == len(FIRST) - 3
    # ... whose owner is alive: a second job stops before any model work and writes nothing
    holder = subprocess.Popen(["sleep", "120"])
    try:
        DeltaTable.forPath(spark, f"{out}/increments").update(
            "increment = 1", {"owner": f"'{os.uname().nodename}:{holder.pid}:test'"})
        versions = {n: DeltaTable.forPath(spark, f"{out}/{n}").history(1).collect()[0].version
                    for n in ("candidates", "rounds", "mix")}
        with pytest.raises(ConcurrentRunError, match=f"held by .*:{holder.pid}:test"):
            run(spark, src, out, incremental=True)
        assert versions == {n: DeltaTable.forPath(spark, f"{out}/{n}").history(1).collect()[0].version
                            for n in versions}
    finally:
        holder.kill()
        holder.wait()
    # ... held from another host: its row's heartbeat is old (a Delta commit waits behind long
    # stages) but its lease, written from the driver, is fresh: still refused
    lease = tmp_path / "out" / "increments" / "_lease" / stopped.run_id
    DeltaTable.forPath(spark, f"{out}/increments").update(
        "increment = 1", {"owner": "'elsewhere:1:test'", "heartbeat_at": "timestamp'2000-01-01 00:00:00'"})
    lease.write_text(json.dumps({"owner": "elsewhere:1:test", "at": utcnow().isoformat()}))
    with pytest.raises(ConcurrentRunError, match="held by elsewhere:1:test"):
        run(spark, src, out, incremental=True)
    # ... then the same command finishes it from round 1, the owner's lease being stale
    lease.write_text(json.dumps({"owner": "elsewhere:1:test", "at": "2000-01-01T00:00:00"}))
    done, events = run(spark, src, out, incremental=True)
    assert done.complete and done.increment == 1 and done.resumed_from_round == 0
    assert [e["round"] for e in events if e["event"] == "round_start"] == [1]
    inc = increments(spark, out)
    assert list(inc.index) == [0, 1] and inc.loc[1, "status"] == "complete" and pd.isna(inc.loc[1, "owner"])
    assert json.loads(lease.read_text())["owner"].startswith(f"{os.uname().nodename}:{os.getpid()}:")  # the new owner's beat
    assert (inc.loc[1, "docs_new"], inc.loc[1, "docs_changed"], inc.loc[1, "docs_removed"]) == (2, 1, 2)
    assert inc.loc[1, "source_rows"] == len(now) and inc.loc[1, "input_rows"] == 3  # n01, n02, g05 validated
    assert inc.loc[1, "source_version"] == 4 and inc.loc[1, "live_mix_rows"] == len(table(spark, out, "mix"))
    # every removal recorded, with the source version that no longer held the row
    from cleancurate.schemas import REMOVALS

    declared = [(f.name, f.dataType) for f in REMOVALS.fields]
    assert [(f.name, f.dataType) for f in spark.read.format("delta").load(f"{out}/removals").schema.fields] == declared
    rem = table(spark, out, "removals").set_index("doc_id")
    assert rem.reason.to_dict() == {"g03": "deleted", "b01": "deleted", "g05": "changed"}
    assert (rem.source_version == 4).all() and (rem.increment == 1).all() and rem.removed_at.notna().all()
    assert_accounted(spark, out, now)
    docs = table(spark, out, "docs").set_index("doc_id")
    assert docs.loc["g05", "response"] == CHANGED_G05[2] and docs.loc["g05", "increment"] == 1
    assert docs.loc["g04", "increment"] == 0  # unchanged rows cost nothing
    q = table(spark, out, "quarantine")
    assert "b01" not in set(q.doc_id) and set(q[q.stage == "validate"].doc_id) == {"b02"}
    # (the output is compared with a fresh full run once, after the next increment: what this one
    # got wrong would still be there, as the next one touches only n02 and n03)
    # a finished increment rerun writes nothing
    mix_version = DeltaTable.forPath(spark, f"{out}/mix").history(1).collect()[0].version
    again, events = run(spark, src, out, incremental=True)
    assert again.increment == 1 and [e["event"] for e in events] == ["unchanged"]
    assert DeltaTable.forPath(spark, f"{out}/mix").history(1).collect()[0].version == mix_version

    # the version the output last read leaves the source's log: the increment compares the snapshot instead
    t.delete("id = 'n02'")
    spark.sql(f"ALTER TABLE delta.`{src}` SET TBLPROPERTIES (delta.checkpointInterval = 1)")
    spark.createDataFrame([("n03", "Is it fine to water a cactus weekly?", "Only in summer; less in winter.")],
                          SCHEMA).write.format("delta").mode("append").save(src)
    now = [r for r in now if r[0] != "n02"] + [("n03", "Is it fine to water a cactus weekly?",
                                                "Only in summer; less in winter.")]
    log = Path(src) / "_delta_log"
    last = max(int(p.name.split(".")[0]) for p in log.glob("*.checkpoint.parquet"))
    for p in log.glob("*.json"):
        if int(p.name.split(".")[0]) < last:
            p.unlink()  # what the log cleanup does after delta.logRetentionDuration
    res, events = run(spark, src, out, incremental=True)
    assert res.complete and res.increment == 2
    why = next(e["reason"] for e in events if e["event"] == "change_feed_unavailable")
    assert "version 5 cannot be read" in why
    inc = increments(spark, out)
    assert inc.loc[2, "read_via"] == "diff" and "cannot be read" in inc.loc[2, "note"]
    assert (inc.loc[2, "docs_new"], inc.loc[2, "docs_changed"], inc.loc[2, "docs_removed"]) == (1, 0, 1)
    assert table(spark, out, "removals").set_index("doc_id").loc["n02", "reason"] == "deleted"
    assert_accounted(spark, out, now)
    assert_mix_as_fresh(spark, src, out, str(tmp_path / "fresh2"))


def test_a_parquet_folder_increment_keeps_the_output_through_bad_input_then_takes_the_changes(spark, tmp_path):
    from cleancurate.tables import InputError

    src, out = tmp_path / "src", str(tmp_path / "out")

    def write_folder(parts: list[list[tuple]], schema: str = SCHEMA) -> None:
        for old in src.glob("*.parquet"):
            old.unlink()
        for i, rows in enumerate(parts):
            spark.createDataFrame(rows, schema).coalesce(1).write.mode("overwrite").parquet(str(tmp_path / f"p{i}"))
            for f in (tmp_path / f"p{i}").glob("part-*.parquet"):
                f.rename(src / f"part-{i}.parquet")

    src.mkdir()
    write_folder([FIRST[:5], FIRST[5:]])
    first, _ = run(spark, str(src), out)
    assert first.complete and increments(spark, out).loc[0, "source_kind"] == "parquet"
    mix_before, docs_before = mix_view(spark, out), len(table(spark, out, "docs"))

    # a file appears whose rows lack the response column: the full run's error, and nothing in the output lost
    write_folder([[(i, q) for i, q, _ in NEW]], "id string, query string")
    with pytest.raises(InputError, match=r"no column 'response' \(input.response_column\)"):
        run(spark, str(src), out, incremental=True)
    assert mix_view(spark, out) == mix_before and len(table(spark, out, "docs")) == docs_before
    # ... and one whose response column changed type
    write_folder([[(i, q, 7) for i, q, _ in NEW]], "id string, query string, response int")
    with pytest.raises(InputError, match=r"column 'response' has type int; it must be string"):
        run(spark, str(src), out, incremental=True)
    assert mix_view(spark, out) == mix_before and len(table(spark, out, "docs")) == docs_before

    # the repaired folder: the appended file, g05 changed, g03 gone, and a new row with a null response
    bad = ("n09", "What is the capital of Peru?", None)
    now = [r for r in FIRST if r[0] not in {"g03", "g05"}] + [CHANGED_G05] + NEW + [bad]
    write_folder([now[:6], now[6:]])
    res, events = run(spark, str(src), out, incremental=True)
    assert res.complete and res.increment == 1
    inc = increments(spark, out)
    assert inc.loc[1, "read_via"] == "diff" and pd.isna(inc.loc[1, "note"])
    assert (inc.loc[1, "docs_new"], inc.loc[1, "docs_changed"], inc.loc[1, "docs_removed"]) == (3, 1, 1)
    q = table(spark, out, "quarantine").set_index("doc_id")
    assert (q.loc["n09", "stage"], q.loc["n09", "reason"], q.loc["n09", "increment"]) == ("validate", "null_response", 1)
    assert table(spark, out, "removals").set_index("doc_id").reason.to_dict() == {"g03": "deleted", "g05": "changed"}
    assert_accounted(spark, out, now)
    # the report lists both increments, with what each found
    from cleancurate.jobs.curation.report import report_data

    shown = report_data(spark, out, res.run_id)["increments"]
    assert list(shown.increment) == [0, 1] and list(shown.docs_removed) == [0, 1]
    assert_mix_as_fresh(spark, str(src), out, str(tmp_path / "fresh"))


def test_a_delta_source_without_its_change_feed_is_compared_as_a_snapshot(spark, tmp_path):
    from cleancurate import config as C
    from cleancurate.sources import change_feed, identify

    src = write_delta(spark, str(tmp_path / "src"), FIRST, cdf=False)
    cfg = C.from_dict(jobdata.job_config(src, str(tmp_path / "out"))).input
    start = identify(spark, cfg)
    spark.createDataFrame(NEW, SCHEMA).write.format("delta").mode("append").save(src)
    end = identify(spark, cfg)
    assert (start.kind, start.version, start.cdf, end.version) == ("delta", 0, False, 1)
    assert not end.same_as(start) and identify(spark, cfg).same_as(end)
    feed, why = change_feed(spark, cfg, start, end)
    assert feed is None and "Change Data Feed is off" in why
    # with the feed on, the rows after the start version are read from it, and only those
    spark.sql(f"ALTER TABLE delta.`{src}` SET TBLPROPERTIES (delta.enableChangeDataFeed = true)")
    on = identify(spark, cfg)
    spark.createDataFrame([CHANGED_G05], SCHEMA).write.format("delta").mode("append").save(src)
    latest = identify(spark, cfg)
    feed, why = change_feed(spark, cfg, on, latest)
    assert why is None and [tuple(r) for r in feed.collect()] == [CHANGED_G05]


def test_a_dataframe_source_is_named_by_its_content_or_by_the_callers_id(spark, tmp_path):
    from cleancurate import config as C
    from cleancurate.sources import identify

    cfg = C.from_dict(jobdata.job_config("unused", str(tmp_path / "out"))).input
    first = identify(spark, cfg, spark.createDataFrame(FIRST, SCHEMA))
    assert first.kind == "dataframe" and identify(spark, cfg, spark.createDataFrame(FIRST[::-1], SCHEMA)).same_as(first)
    changed = spark.createDataFrame([CHANGED_G05 if r[0] == "g05" else r for r in FIRST], SCHEMA)
    assert not identify(spark, cfg, changed).same_as(first)  # one response differs
    # an id from the caller stands for the content: the same id, the same source
    assert identify(spark, cfg, changed, "batch-7").same_as(identify(spark, cfg, spark.createDataFrame(FIRST, SCHEMA),
                                                                    "batch-7"))
    assert not identify(spark, cfg, changed, "batch-8").same_as(identify(spark, cfg, changed, "batch-7"))
