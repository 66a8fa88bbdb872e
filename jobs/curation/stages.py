"""The curation job as Spark stages, one committed Delta slice per step.

::

    input -> validate (+doc_id) -----------------------------> quarantine[validate]
          -> docs (selected by hash of doc_id + seed)         -> docs
          -> round 0: score originals                         -> candidates[0] -> rounds[0]
          -> round r: beam x grid -> rewrite -> score -> gate  -> candidates[r]
                      pool(beam, survivors) -> rank -> top-k  -> rounds[r]
          -> best per document                                -> curated, quarantine[curate]
          -> unselected originals + curated                   -> mix

Each step reads its inputs back from Delta, so Spark's plan never grows with the
rounds, every step is a restart point, and a rerun replaces exactly its own slice.
A round counts as finished only when ``runs.last_complete_round`` says so, which is
written after the round's slices are committed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from cleancurate.config import Config, ConfigError
from cleancurate.gate import gate_settings
from cleancurate.tables import TableStore, read_input, sql_literal

ProgressFn = Callable[[dict], None]


class AccountingError(RuntimeError):
    """Rows were lost or invented: the run's row counts do not add up."""


@dataclass
class CurationResult:
    """What a run produced: its id, where the tables are, and its row counts."""

    run_id: str
    config: Config
    store: TableStore
    counts: dict = field(default_factory=dict)
    complete: bool = True
    resumed_from_round: int | None = None
    report_path: str | None = None

    def table(self, name: str):
        """One output table (this run's rows) as a DataFrame."""
        from pyspark.sql import functions as F

        return self.store.read(name).where(F.col("run_id") == self.run_id)


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _udf_cfgs(cfg: Config) -> dict:
    d = cfg.to_dict()
    return {k: d[k] for k in ("model", "runtime", "curation", "metrics", "gate", "harm")}


class CurationJob:
    """Runs (or resumes) one curation run.

    Args:
        cfg: validated configuration.
        spark: session to use (default: the active one, or a local one with Delta).
        source: a DataFrame to curate instead of ``cfg.input``.
        new_run: allow adding a run with a different config to an output that holds others.
        progress: callback receiving one dict per event (round start/end, stage timings).
        stop_after_round: commit this round, then return without finishing (time-boxed runs).
    """

    def __init__(self, cfg: Config, spark=None, source=None, new_run: bool = False,
                 progress: ProgressFn | None = None, stop_after_round: int | None = None):
        from cleancurate.session import get_spark

        self.cfg = cfg
        self.spark = spark or get_spark(cfg.spark.master, cfg.spark.app_name, cfg.spark.conf)
        self.source = source
        self.new_run = new_run
        self.progress = progress or (lambda event: None)
        self.stop_after_round = stop_after_round
        self.store = TableStore(self.spark, cfg.output)
        self.hash = cfg.hash
        self.run_id = ""
        self.timings: dict[str, float] = {}
        self.counts: dict = {}
        self._udfs: dict = {}
        self._started_at = None

    # ---------------------------------------------------------------- helpers
    def _emit(self, event: str, **data) -> None:
        self.progress({"event": event, "run_id": self.run_id, **data})

    def _where_run(self) -> str:
        return f"run_id = {sql_literal(self.run_id)}"

    def _read(self, name: str):
        from pyspark.sql import functions as F

        return self.store.read(name).where(F.col("run_id") == self.run_id)

    def _partitions(self) -> int:
        return self.cfg.runtime.partitions or self.spark.sparkContext.defaultParallelism

    def _build_udfs(self) -> dict:
        """Build every UDF once per job (a UDF object per round would defeat caching)."""
        if self._udfs:
            return self._udfs
        from cleancurate.udfs.gate import gate_udf
        from cleancurate.udfs.rewrite import rewrite_udf
        from cleancurate.udfs.score import scorer_udf

        c = _udf_cfgs(self.cfg)
        self._udfs = {
            "rewrite": rewrite_udf(c["model"], c["runtime"], c["curation"]),
            "score_original": scorer_udf(c, strip=False),
            "score": scorer_udf(c, strip=True),
            "gate": gate_udf(gate_settings(c), tuple(self.cfg.limits.injection_patterns)),
        }
        return self._udfs

    # ---------------------------------------------------------------- run id
    def _resolve_run(self) -> tuple[str, int, dict | None]:
        """Pick the run id, the last complete round (-1 when starting) and the stored run row."""
        run_id = f"run-{self.hash[:12]}"
        if not self.store.exists("runs"):
            return run_id, -1, None
        rows = self.store.read("runs").collect()
        same = [r for r in rows if r.run_id == run_id]
        if same:
            return run_id, int(same[0].last_complete_round), same[0].asDict()
        if rows and not self.new_run:
            other = rows[0]
            raise ConfigError(
                f"output {self.store.location('')} holds run '{other.run_id}' (config hash {other.config_hash}); "
                f"this config hashes to {self.hash}. Pass --new-run (new_run=True) to add a run with this config "
                "beside it, or choose another output.path"
            )
        return run_id, -1, None

    def _mark(self, last_round: int, status: str) -> None:
        from pyspark.sql import Row

        from cleancurate.schemas import RUNS

        counts = self.counts
        if self._started_at is None:
            got = self._read("runs").select("started_at").collect() if self.store.exists("runs") else []
            self._started_at = got[0].started_at if got else _now()
        row = Row(
            run_id=self.run_id, config_hash=self.hash, config_json=json.dumps(self.cfg.to_dict(), sort_keys=True),
            model=self.cfg.model.name, objective=self.cfg.curation.objective, status=status,
            last_complete_round=last_round, input_rows=counts.get("input_rows"),
            valid_rows=counts.get("valid_rows"), selected_rows=counts.get("selected_rows"),
            curated_rows=counts.get("curated_rows"), quarantined_rows=counts.get("quarantined_rows"),
            mix_rows=counts.get("mix_rows"), started_at=self._started_at, updated_at=_now(),
        )
        # one row per run, replaced whole: idempotent like every other write, and cheaper than MERGE
        self.store.write_slice(self.spark.createDataFrame([tuple(row)], RUNS), "runs", self._where_run())

    # ---------------------------------------------------------------- steps
    def _prepare(self) -> dict:
        """Validate the input, quarantine bad rows, select, and commit ``docs``."""
        from pyspark.sql import functions as F

        from cleancurate.jobs.curation.validate import selection_expr, validate

        t0 = time.time()
        df = self.source if self.source is not None else read_input(self.spark, self.cfg.input)
        checked = validate(df, self.cfg)
        sel = self.cfg.selection
        run = F.lit(self.run_id)
        quarantine = checked.quarantine.select(
            run.alias("run_id"), "doc_id", F.lit("validate").alias("stage"), "reason",
            F.lit(None).cast("string").alias("detail"), "query", "response", "row_json",
        )
        self.store.write_slice(quarantine, "quarantine", f"{self._where_run()} AND stage = 'validate'")
        valid = self._screen(checked.valid)
        valid = valid.withColumn("selected", selection_expr(sel.fraction, sel.seed) & ~F.col("unsafe"))
        docs = valid.select(run.alias("run_id"), "doc_id", "query", "response", "selected", "harm", "unsafe",
                            "screen_error")
        self.store.write_slice(docs, "docs", self._where_run())
        self._quarantine_screened()
        if sel.max_docs is not None:
            self._cap_selection(sel.max_docs)
        counts = self._docs_counts()
        counts["input_rows"] = df.count()
        grid = len(self.cfg.curation.temperatures) * len(self.cfg.curation.top_ps)
        worst = counts["selected_rows"] * self.cfg.curation.beam_size * grid
        if worst > self.cfg.curation.max_candidates_per_round:
            raise ConfigError(
                f"a round could generate up to {worst} candidates ({counts['selected_rows']} documents x beam "
                f"{self.cfg.curation.beam_size} x grid {grid}), over curation.max_candidates_per_round="
                f"{self.cfg.curation.max_candidates_per_round}; lower selection.fraction, curation.beam_size or "
                "the sampling grid, or raise the cap"
            )
        from cleancurate.models import check_fits

        check_fits(self.cfg.model.name, self.cfg.model.memory_gb)
        self.timings["prepare"] = time.time() - t0
        self._emit("prepared", **counts, seconds=self.timings["prepare"])
        return counts

    def _screen(self, valid):
        """Add ``harm``, ``unsafe`` and ``screen_error``: the safety screen of every valid original.

        A row is unsafe when its harm probability reaches ``harm.threshold`` or when it
        could not be scored (fail closed). Without a screen every row is safe.
        """
        from pyspark.sql import functions as F

        h = self.cfg.harm
        if not (h.screen and h.head):
            return (valid.withColumn("harm", F.lit(None).cast("double")).withColumn("unsafe", F.lit(False))
                    .withColumn("screen_error", F.lit(None).cast("string")))
        from cleancurate.udfs.screen import screen_udf

        scored = valid.withColumn("_s", screen_udf(_udf_cfgs(self.cfg))("query", "response"))
        harm = F.col("_s.harm")
        unsafe = harm.isNull() | F.isnan(harm) | (harm >= F.lit(h.threshold))
        return (scored.withColumn("harm", harm).withColumn("unsafe", unsafe)
                .withColumn("screen_error", F.col("_s.error")).drop("_s"))

    def _quarantine_screened(self) -> None:
        """Unsafe originals leave the mix for quarantine (stage ``screen``), unless configured to stay flagged."""
        from pyspark.sql import functions as F

        unsafe = self._read("docs").where("unsafe")
        if self.cfg.harm.screen_action != "quarantine":
            unsafe = unsafe.where(F.lit(False))
        rows = unsafe.select(
            F.lit(self.run_id).alias("run_id"), "doc_id", F.lit("screen").alias("stage"),
            F.when(F.col("screen_error").isNotNull() | F.col("harm").isNull(), "screen_failed")
            .otherwise("unsafe_original").alias("reason"),
            F.coalesce(F.col("screen_error"),
                       F.format_string(f"harm=%.3f >= harm.threshold={self.cfg.harm.threshold}", F.col("harm")))
            .alias("detail"),
            F.col("query").substr(1, 2000).alias("query"), F.col("response").substr(1, 2000).alias("response"),
            F.to_json(F.struct("doc_id", "query", "response")).alias("row_json"))
        self.store.write_slice(rows, "quarantine", f"{self._where_run()} AND stage = 'screen'")

    def _cap_selection(self, max_docs: int) -> None:
        from pyspark.sql import functions as F

        docs = self._read("docs")
        key = F.sha2(F.concat(F.lit(f"{self.cfg.selection.seed}:"), F.col("doc_id")), 256)
        keep = docs.where("selected").select("doc_id", key.alias("k")).orderBy("k").limit(max_docs)
        capped = docs.join(keep.select("doc_id", F.lit(True).alias("_keep")), "doc_id", "left").select(
            "run_id", "doc_id", "query", "response", (F.col("selected") & F.col("_keep").isNotNull()).alias("selected"),
            "harm", "unsafe", "screen_error")
        capped = capped.localCheckpoint()  # materialize before overwriting the table it reads
        self.store.write_slice(capped, "docs", self._where_run())

    def _docs_counts(self) -> dict:
        from pyspark.sql import functions as F

        row = self._read("docs").agg(F.count("*").alias("v"), F.sum(F.col("selected").cast("int")).alias("s"),
                                     F.sum(F.col("unsafe").cast("int")).alias("u")).collect()[0]
        return {"valid_rows": int(row.v or 0), "selected_rows": int(row.s or 0), "unsafe_rows": int(row.u or 0)}

    def _round0(self) -> None:
        """Score the selected originals: the references every gate compares against."""
        from pyspark.sql import functions as F

        from cleancurate.schemas import CANDIDATES

        t0 = time.time()
        u = self._build_udfs()
        docs = self._read("docs").where("selected")
        orig = docs.select(
            "doc_id", "query", F.col("response").alias("text"), F.col("response").alias("original"),
            F.lit(None).cast("string").alias("error"),
        ).repartition(self._partitions(), "doc_id").sortWithinPartitions("doc_id")
        scored = orig.withColumn("_q", u["score_original"]("query", "text", "original"))
        scored = scored.withColumn("error", F.col("_q.error"))
        for c in ("ppl", "scored_tokens", "helpfulness", "similarity", "safety", "harm"):
            scored = scored.withColumn(c, F.col(f"_q.{c}"))
        too_many = F.col("scored_tokens") > self.cfg.limits.max_tokens
        maximize = self.cfg.curation.objective == "maximize"
        reason = (F.when(F.col("error").isNotNull(), F.lit("error"))
                  .when(too_many, F.lit("too_many_tokens"))
                  .when(F.lit(maximize), F.lit("original")))
        out = scored.select(
            F.lit(self.run_id).alias("run_id"), F.lit(0).alias("round"), "doc_id",
            _sha_id(F.col("doc_id"), F.lit("0"), F.lit("original")).alias("cand_id"),
            F.lit(None).cast("string").alias("parent_id"), F.lit(True).alias("is_original"),
            F.lit(False).alias("carried"), F.lit(0).alias("origin_round"),
            F.lit(None).cast("double").alias("temperature"), F.lit(None).cast("double").alias("top_p"),
            F.lit(None).cast("long").alias("seed"), "text", F.col("text").alias("raw_text"),
            F.lit(0).alias("gen_tokens"), "ppl", "scored_tokens", F.col("_q.readability").alias("readability"),
            "helpfulness", F.lit(1.0).alias("similarity"), "safety", "harm",
            F.lit(None).cast("double").alias("retention"), F.lit(1.0).alias("length_ratio"),
            F.col("_q.repeat_ratio").alias("repeat_ratio"), F.col("_q.compression_ratio").alias("compression_ratio"),
            F.lit(False).alias("stripped_preamble"), reason.isNull().alias("passed"),
            reason.alias("reject_reason"),
            F.when(too_many & F.col("error").isNull(),
                   F.concat(F.lit("scored_tokens="), F.col("scored_tokens").cast("string"),
                            F.lit(f" > limits.max_tokens={self.cfg.limits.max_tokens}")))
            .otherwise(F.col("error")).alias("error"),
        )
        self.store.write_slice(_conform(out, CANDIDATES), "candidates", f"{self._where_run()} AND round = 0",
                               partition_by=["run_id", "round"])
        cands = self._read("candidates").where("round = 0")
        usable = F.col("reject_reason").isNull() | (F.col("reject_reason") == "original")
        rounds = cands.withColumn("rank", F.when(usable, F.lit(1))).withColumn("in_beam", usable) \
            .withColumn("doc_active", usable)
        self._write_round(rounds, 0)
        bad = cands.where(~usable).join(docs.select("doc_id", "query", "response"), "doc_id").select(
            F.lit(self.run_id).alias("run_id"), "doc_id", F.lit("round0").alias("stage"),
            F.when(F.col("reject_reason") == "too_many_tokens", "too_many_tokens")
            .when(F.col("error").startswith("judge_unparseable"), "judge_unparseable")
            .otherwise(F.lit("scoring_failed")).alias("reason"),
            F.col("error").alias("detail"), F.col("query").substr(1, 2000).alias("query"),
            F.col("response").substr(1, 2000).alias("response"),
            F.to_json(F.struct("doc_id", "query", "response")).alias("row_json"),
        )
        self.store.write_slice(bad, "quarantine", f"{self._where_run()} AND stage = 'round0'")
        self._stats(0, time.time() - t0)

    def _write_round(self, df, r: int) -> None:
        from cleancurate.schemas import ROUNDS

        self.store.write_slice(_conform(df, ROUNDS), "rounds", f"{self._where_run()} AND round = {r}",
                               partition_by=["run_id", "round"])

    def _generate(self, r: int) -> None:
        """Stage A of round r: beam x grid -> rewrite -> score -> gate -> candidates[r]."""
        from pyspark.sql import functions as F

        from cleancurate.schemas import CANDIDATES

        cur = self.cfg.curation
        u = self._build_udfs()
        beam = self._read("rounds").where(f"round = {r - 1} AND in_beam AND doc_active")
        refs = self._read("rounds").where("round = 0 AND is_original").select(
            "doc_id", F.col("text").alias("original"), F.col("ppl").alias("ref_ppl"),
            F.col("readability").alias("ref_readability"), F.col("helpfulness").alias("ref_helpfulness"),
            F.col("safety").alias("ref_safety"))
        queries = self._read("docs").select("doc_id", "query")
        grid = self.spark.createDataFrame(
            [(float(t), float(p)) for t in cur.temperatures for p in cur.top_ps], "temperature double, top_p double")
        req = (beam.select("doc_id", F.col("cand_id").alias("parent_id"), F.col("text").alias("parent_text"))
               .crossJoin(F.broadcast(grid))
               .join(queries, "doc_id").join(refs, "doc_id"))
        cand_id = _sha_id(F.col("doc_id"), F.lit(str(r)), F.col("parent_id"),
                          F.format_number("temperature", 3), F.format_number("top_p", 3))
        req = (req.withColumn("cand_id", cand_id)
               .withColumn("seed", F.conv(F.substring("cand_id", 1, 15), 16, 10).cast("long"))
               .repartition(self._partitions(), "doc_id").sortWithinPartitions("doc_id", "cand_id"))
        gen = req.withColumn("_g", u["rewrite"]("query", "parent_text", "temperature", "top_p", "seed"))
        gen = gen.withColumn("raw_text", F.col("_g.text")).withColumn("gen_tokens", F.col("_g.gen_tokens")) \
            .withColumn("error", F.col("_g.error")).drop("_g")
        scored = gen.withColumn("_q", u["score"]("query", F.coalesce("raw_text", F.lit("")), "original"))
        scored = scored.withColumn("text", F.col("_q.clean_text")).withColumn(
            "error", F.coalesce("error", "_q.error"))
        for c in ("ppl", "scored_tokens", "helpfulness", "similarity", "safety", "harm", "retention"):
            scored = scored.withColumn(c, F.col(f"_q.{c}"))
        gate_in = F.struct(
            "text", "error", F.col("_q.meta_text").alias("meta_text"), F.col("_q.form_fault").alias("form_fault"),
            F.lit(False).alias("dup"), "ppl", F.col("_q.readability").alias("readability"), "helpfulness",
            "similarity", "safety", "harm", "retention",
            F.col("_q.length_ratio").alias("length_ratio"), F.col("_q.repeat_ratio").alias("repeat_ratio"),
            F.col("_q.compression_ratio").alias("compression_ratio"), F.col("_q.coverage").alias("coverage"),
            "ref_ppl", "ref_readability",
            "ref_helpfulness", "ref_safety")
        gated = scored.withColumn("reject_reason", u["gate"](gate_in))
        out = gated.select(
            F.lit(self.run_id).alias("run_id"), F.lit(r).alias("round"), "doc_id", "cand_id", "parent_id",
            F.lit(False).alias("is_original"), F.lit(False).alias("carried"), F.lit(r).alias("origin_round"),
            "temperature", "top_p", "seed", "text", "raw_text", "gen_tokens", "ppl", "scored_tokens",
            F.col("_q.readability").alias("readability"), "helpfulness", "similarity", "safety", "harm", "retention",
            F.col("_q.length_ratio").alias("length_ratio"), F.col("_q.repeat_ratio").alias("repeat_ratio"),
            F.col("_q.compression_ratio").alias("compression_ratio"),
            F.col("_q.stripped_preamble").alias("stripped_preamble"),
            F.col("reject_reason").isNull().alias("passed"), "reject_reason", "error",
            F.col("parent_text"), F.col("original"),
        )
        if cur.dedupe_candidates:
            out = _mark_duplicates(out)
        self.store.write_slice(_conform(out, CANDIDATES), "candidates", f"{self._where_run()} AND round = {r}",
                               partition_by=["run_id", "round"])

    def _rank(self, r: int) -> None:
        """Stage B of round r: pool the beam and the survivors, keep top-k per document."""
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        cur = self.cfg.curation
        maximize = cur.objective == "maximize"
        new = self._read("candidates").where(f"round = {r}")
        carried = (self._read("rounds").where(f"round = {r - 1} AND in_beam AND doc_active")
                   .drop("rank", "in_beam", "doc_active")
                   .withColumn("round", F.lit(r)).withColumn("carried", F.lit(True)))
        pool = new.unionByName(carried)
        eligible = F.col("passed") | F.col("is_original")
        order = ([F.col("is_original").asc(), F.col("ppl").desc()] if maximize else [F.col("ppl").asc()])
        w = Window.partitionBy("doc_id").orderBy(F.when(eligible, 0).otherwise(1), *order, F.col("cand_id"))
        ranked = pool.withColumn("_rn", F.row_number().over(w))
        ranked = ranked.withColumn("rank", F.when(eligible, F.col("_rn"))).withColumn(
            "in_beam", eligible & (F.col("_rn") <= cur.beam_size)).drop("_rn")
        # stopping rule: did this round beat the best the document had?
        scorable = F.col("passed") & ~F.col("is_original") if maximize else F.col("passed")
        best = F.max if maximize else F.min
        agg = ranked.groupBy("doc_id").agg(
            best(F.when(scorable & F.col("carried"), F.col("ppl"))).alias("_prev"),
            best(F.when(scorable & ~F.col("carried"), F.col("ppl"))).alias("_new"))
        tol = cur.stop_tolerance
        if maximize:
            improved = F.col("_new").isNotNull() & (F.col("_prev").isNull() | (F.col("_new") > F.col("_prev") * (1 + tol)))
        else:
            improved = F.col("_new").isNotNull() & (F.col("_prev").isNull() | (F.col("_new") < F.col("_prev") * (1 - tol)))
        active = improved if cur.early_stop else F.lit(True)
        agg = agg.select("doc_id", active.alias("doc_active"))
        self._write_round(ranked.join(agg, "doc_id"), r)

    def _stats(self, r: int, seconds: float) -> dict:
        from pyspark.sql import functions as F

        from cleancurate.schemas import ROUND_STATS

        rows = self._read("rounds").where(f"round = {r}")
        new = F.col("carried") == F.lit(False)
        agg = rows.agg(
            F.countDistinct("doc_id").alias("docs_active"),
            F.sum(new.cast("long")).alias("candidates"),
            F.sum((new & F.col("passed")).cast("long")).alias("passed"),
            F.sum(F.col("in_beam").cast("long")).alias("in_beam"),
            F.sum(F.when(new, F.col("gen_tokens")).cast("long")).alias("gen_tokens"),
            F.sum(F.when(new, F.col("scored_tokens")).cast("long")).alias("scored_tokens"),
            F.percentile_approx(F.when(F.col("in_beam"), F.col("ppl")), 0.5).alias("median_beam_ppl"),
            F.countDistinct(F.when(~F.col("doc_active"), F.col("doc_id"))).alias("converged"),
        ).collect()[0]
        converged = agg.converged or 0
        rejects = {row.reject_reason: int(row["count"]) for row in
                   rows.where(new & F.col("reject_reason").isNotNull()).groupBy("reject_reason").count().collect()}
        stats = {
            "run_id": self.run_id, "round": r, "docs_active": int(agg.docs_active or 0),
            "candidates": int(agg.candidates or 0), "passed": int(agg.passed or 0), "in_beam": int(agg.in_beam or 0),
            "docs_converged": int(converged), "gen_tokens": int(agg.gen_tokens or 0),
            "scored_tokens": int(agg.scored_tokens or 0),
            "median_beam_ppl": float(agg.median_beam_ppl) if agg.median_beam_ppl is not None else None,
            "reject_counts_json": json.dumps(dict(sorted(rejects.items()))), "seconds": float(seconds),
        }
        df = self.spark.createDataFrame([tuple(stats[f.name] for f in ROUND_STATS.fields)], ROUND_STATS)
        self.store.write_slice(df, "round_stats", f"{self._where_run()} AND round = {r}")
        self._mark(r, "running")
        self._emit("round_committed", **{k: v for k, v in stats.items() if k != "run_id"})
        return stats

    def _finalize(self, counts: dict) -> dict:
        """Pick the best candidate per document; write curated, quarantine[curate] and mix."""
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        from cleancurate.schemas import CURATED, MIX

        t0 = time.time()
        cur = self.cfg.curation
        maximize = cur.objective == "maximize"
        rounds = self._read("rounds")
        refs = rounds.where("round = 0 AND is_original AND in_beam").select(
            "doc_id", F.col("ppl").alias("ppl_original"), F.col("readability").alias("readability_original"),
            F.col("helpfulness").alias("helpfulness_original"), F.col("safety").alias("safety_original"),
            F.col("harm").alias("harm_original"))
        fresh = rounds.where("NOT carried AND NOT is_original")
        per_doc = fresh.groupBy("doc_id").agg(
            F.count("*").alias("n_candidates"), F.max("round").alias("rounds_active"),
            F.sum("gen_tokens").alias("doc_gen_tokens"), F.sum("scored_tokens").alias("doc_scored_tokens"),
            F.sum(F.col("passed").cast("long")).alias("n_passed"))
        # why candidates were rejected, most frequent first: "retention:12, not_an_answer:3"
        by_rule = fresh.where("reject_reason IS NOT NULL").groupBy("doc_id", "reject_reason").count()
        rejections = by_rule.groupBy("doc_id").agg(F.sort_array(F.collect_list(F.struct(
            (-F.col("count")).alias("k"), "reject_reason", "count"))).alias("_r")).select(
            "doc_id", F.array_join(F.transform("_r", lambda x: F.concat(x["reject_reason"], F.lit(":"),
                                                                      x["count"].cast("string"))), ", ")
            .alias("rejections"))
        eligible = rounds.where("passed AND NOT carried" + (" AND NOT is_original" if maximize else ""))
        order = [F.col("ppl").desc()] if maximize else [F.col("ppl").asc(), F.col("is_original").desc()]
        w = Window.partitionBy("doc_id").orderBy(*order, F.col("round"), F.col("cand_id"))
        best = eligible.withColumn("_rn", F.row_number().over(w)).where("_rn = 1")
        docs = self._read("docs").where("selected").select("doc_id", "query", F.col("response").alias("response_original"))
        joined = (refs.join(docs, "doc_id").join(best, "doc_id", "left").join(per_doc, "doc_id", "left")
                  .join(rejections, "doc_id", "left"))
        # minimize: a revision that passed the gate and is less perplexing than the original;
        # maximize: a revision that passed the gate, safety implication included (the original never competes)
        improved = ~F.col("is_original") & (F.lit(True) if maximize else F.col("ppl") < F.col("ppl_original"))
        kept_reason = (F.when(improved, F.lit(None))
                       .when(F.coalesce("n_passed", F.lit(0)) == 0, F.lit("no_revision_passed_gate"))
                       .otherwise(F.lit("original_ranked_best")))
        curated = joined.where(F.col("cand_id").isNotNull()).select(
            F.lit(self.run_id).alias("run_id"), "doc_id", "query", "response_original",
            F.col("text").alias("response_curated"), "ppl_original", F.col("ppl").alias("ppl_curated"),
            improved.alias("improved"), kept_reason.alias("kept_reason"), "rejections",
            "harm_original", F.col("harm").alias("harm_curated"), "retention",
            F.col("round").alias("best_round"), F.col("cand_id").alias("best_cand_id"), "temperature", "top_p",
            "readability_original", F.col("readability").alias("readability_curated"),
            "helpfulness_original", F.col("helpfulness").alias("helpfulness_curated"), "similarity",
            "safety_original", F.col("safety").alias("safety_curated"),
            F.coalesce("n_candidates", F.lit(0)).alias("n_candidates"),
            F.coalesce("rounds_active", F.lit(0)).alias("rounds_active"),
            F.coalesce("doc_gen_tokens", F.lit(0)).alias("gen_tokens"),
            F.coalesce("doc_scored_tokens", F.lit(0)).alias("scored_tokens"),
            F.lit(cur.objective).alias("objective"), F.lit(self.cfg.model.name).alias("model"),
            F.lit(self.hash).alias("config_hash"),
        )
        self.store.write_slice(_conform(curated, CURATED), "curated", self._where_run())
        no_pass = joined.where(F.col("cand_id").isNull()).select(
            F.lit(self.run_id).alias("run_id"), "doc_id", F.lit("curate").alias("stage"),
            F.lit("no_revision_passed_gate").alias("reason"),
            F.concat(F.lit("candidates tried: "), F.coalesce("n_candidates", F.lit(0)).cast("string"),
                     F.lit("; rejected by rule: "), F.coalesce("rejections", F.lit("none"))).alias("detail"),
            F.col("query").substr(1, 2000).alias("query"), F.col("response_original").substr(1, 2000).alias("response"),
            F.to_json(F.struct("doc_id", "query", F.col("response_original").alias("response"))).alias("row_json"))
        self.store.write_slice(no_pass, "quarantine", f"{self._where_run()} AND stage = 'curate'")
        cur_tbl = self._read("curated").select("doc_id", "response_curated")
        docs_in_mix = self._read("docs")
        if self.cfg.harm.screen_action == "quarantine":
            docs_in_mix = docs_in_mix.where("NOT unsafe")
        mix = docs_in_mix.join(cur_tbl, "doc_id", "left").select(
            F.lit(self.run_id).alias("run_id"), "doc_id", "query",
            F.coalesce("response_curated", "response").alias("response"),
            F.when(F.col("response_curated").isNotNull(), "curated").otherwise("original").alias("source"),
            "selected", F.col("unsafe").alias("safety_flag"), F.lit(self.hash).alias("config_hash"))
        self.store.write_slice(_conform(mix, MIX), "mix", self._where_run())
        self.timings["finalize"] = time.time() - t0
        return self._account(counts)

    def _account(self, counts: dict) -> dict:
        """Check that every row is accounted for; raise AccountingError otherwise."""
        from pyspark.sql import functions as F

        q = {r.stage: int(r["count"]) for r in self._read("quarantine").groupBy("stage").count().collect()}
        mix_rows = self._read("mix").count()
        curated_rows = self._read("curated").count()
        counts = dict(counts)
        counts.update(
            mix_rows=mix_rows, curated_rows=curated_rows,
            quarantined_rows=sum(q.values()), quarantined_by_stage=q,
            improved_rows=self._read("curated").where(F.col("improved")).count(),
        )
        problems = []
        if counts["input_rows"] != mix_rows + q.get("validate", 0) + q.get("screen", 0):
            problems.append(f"input rows {counts['input_rows']} != mix {mix_rows} + quarantined at validation "
                            f"{q.get('validate', 0)} + screened out {q.get('screen', 0)}")
        if counts["valid_rows"] != mix_rows + q.get("screen", 0):
            problems.append(f"valid rows {counts['valid_rows']} != mix rows {mix_rows} + screened out "
                            f"{q.get('screen', 0)}")
        if counts["selected_rows"] != curated_rows + q.get("round0", 0) + q.get("curate", 0):
            problems.append(f"selected rows {counts['selected_rows']} != curated {curated_rows} + quarantined "
                            f"{q.get('round0', 0) + q.get('curate', 0)}")
        if problems:
            raise AccountingError("row accounting failed for run " + self.run_id + ": " + "; ".join(problems))
        return counts

    def _step(self, name: str, fn, *args):
        t0 = time.time()
        out = fn(*args)
        self.timings[name] = time.time() - t0
        self._emit("step", step=name, seconds=self.timings[name])
        return out

    # ---------------------------------------------------------------- run
    def run(self) -> CurationResult:
        """Run the job, resuming after the last complete round of a matching run."""
        t_start = time.time()
        self.spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(self.cfg.runtime.arrow_batch_rows))
        self.run_id, last, stored = self._resolve_run()
        resumed = last if stored is not None else None
        self._emit("start", config_hash=self.hash, resume_after_round=last)
        R = self.cfg.curation.rounds
        if stored is None or stored.get("input_rows") is None:
            self.counts = self._prepare()
            self._mark(-1, "running")
            last = -1
        else:
            self.counts = {k: int(stored[k]) for k in ("input_rows", "valid_rows", "selected_rows")}
        if stored is not None and stored["status"] == "complete":
            self.counts = self._account(self.counts)
            return CurationResult(self.run_id, self.cfg, self.store, self.counts, True, resumed)
        for r in range(max(0, last + 1), R + 1):
            t0 = time.time()
            self._emit("round_start", round=r, rounds=R)
            if r == 0:
                self._step(f"round_{r}.score", self._round0)
            else:
                self._step(f"round_{r}.generate", self._generate, r)
                self._step(f"round_{r}.rank", self._rank, r)
                self._step(f"round_{r}.bookkeeping", self._stats, r, time.time() - t0)
            self.timings[f"round_{r}"] = time.time() - t0
            if self.stop_after_round is not None and r >= self.stop_after_round and r < R:
                self._emit("stopped", round=r)
                return CurationResult(self.run_id, self.cfg, self.store, self.counts, False, resumed)
        self.counts = self._step("finalize", self._finalize, self.counts)
        self._mark(R, "complete")
        self.counts["seconds"] = time.time() - t_start
        self._emit("complete", **{k: v for k, v in self.counts.items() if k != "quarantined_by_stage"})
        return CurationResult(self.run_id, self.cfg, self.store, self.counts, True, resumed)


def curate(source, config: Config | str, spark=None, new_run: bool = False, overrides: list[str] | None = None,
           progress: ProgressFn | None = None, stop_after_round: int | None = None, report: bool = True) -> CurationResult:
    """Curate a DataFrame or table and return the run's tables (the lakehouse-step API).

    Args:
        source: a DataFrame, a table name, a Parquet/Delta path, or None to use ``config.input``.
        config: a :class:`Config`, or a profile name / YAML path.
        spark: the session (default: active or local).
        new_run: allow a run with a new config beside existing runs in the same output.
        overrides: ``section.key=value`` overrides applied to the config.
        progress: callback for progress events.
        stop_after_round: commit this round and return (resume later with the same config).
        report: write the HTML report after a complete run.

    Returns:
        :class:`CurationResult`; ``result.table("curated")`` etc. give the tables.
    """
    from cleancurate import config as config_mod

    cfg = config if isinstance(config, Config) else config_mod.load(config, overrides)
    if isinstance(config, Config) and overrides:
        cfg = cfg.with_overrides(overrides)
    df = None
    if isinstance(source, str):
        cfg = cfg.with_overrides({"input.path": source})
    elif source is not None:
        df = source
    job = CurationJob(cfg, spark=spark, source=df, new_run=new_run, progress=progress, stop_after_round=stop_after_round)
    result = job.run()
    if report and result.complete and cfg.report.enabled:
        try:
            from cleancurate.jobs.curation.report import build_report
        except ImportError:  # report module is optional at this layer
            build_report = None
        if build_report is not None:
            result.report_path = build_report(result, timings=job.timings)
    return result


# ---------------------------------------------------------------- column helpers
def _sha_id(*cols):
    from pyspark.sql import functions as F

    return F.substring(F.sha2(F.concat_ws("|", *cols), 256), 1, 20)


def _conform(df, schema):
    """Select and cast ``df`` to exactly the columns of ``schema``."""
    from pyspark.sql import functions as F

    return df.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields])


def _mark_duplicates(df):
    """Reject a candidate whose text repeats its parent, the original, or an earlier candidate."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    w = Window.partitionBy("doc_id", "text").orderBy("cand_id")
    norm = F.lower(F.trim(F.col("text")))
    same_as_source = (norm == F.lower(F.trim("parent_text"))) | (norm == F.lower(F.trim("original")))
    dup = F.col("passed") & ((F.row_number().over(w) > 1) | same_as_source)
    return (df.withColumn("_dup", dup)
            .withColumn("reject_reason", F.when(F.col("_dup"), F.lit("duplicate")).otherwise(F.col("reject_reason")))
            .withColumn("passed", F.col("passed") & ~F.col("_dup")).drop("_dup"))
