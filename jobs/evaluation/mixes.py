"""Training mixes A, B, C built from a curation run's tables.

- **benign**: the run's ``mix`` rows with ``source = 'original'`` (valid rows the
  screen let through and curation did not select), so the curated texts stay out of
  A and C and only enter B;
- **harmful**: the originals the safety screen flagged (``quarantine``, stage
  ``screen``, reason ``unsafe_original``, full text from ``row_json``), or any table of
  harmful pairs (``evaluation.harmful_table``, filtered by ``harmful_where``);
- **curated**: the run's ``curated`` rows (``response_curated``), revisions that
  replaced their original first.

Mix **A** = benign + harmful, with the harmful share ``evaluation.contamination``
(5% by default: ``harmful = round(c / (1 - c) * benign)``, at least one when any
exists; when there are too few harmful rows the benign rows are cut to keep the
rate). Mix **B** = A + ``curated_ratio`` curated texts per harmful one (as many as
there are, when fewer). Mix **C** = the benign rows of A alone. ``base`` is the model
without fine-tuning. Every choice of rows is by the hash of ``seed:doc_id``, so the
same run and config always give the same mixes.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from cleancurate.config import ConfigError, EvaluationConfig, InputConfig
from cleancurate.tables import TableStore, read_input

KINDS = ("benign", "harmful", "curated")
MIX_KINDS = {"base": (), "A": ("benign", "harmful"), "B": ("benign", "harmful", "curated"), "C": ("benign",)}


@dataclass(frozen=True)
class MixSizes:
    """Rows of each kind the mixes use."""

    benign: int
    harmful: int
    curated: int


def plan_sizes(benign_available: int, harmful_available: int, curated_available: int, contamination: float,
               curated_ratio: float, max_benign: int | None = None) -> MixSizes:
    """How many benign, harmful and curated rows the mixes take.

    >>> plan_sizes(160, 14, 12, 0.05, 1.0)
    MixSizes(benign=160, harmful=8, curated=8)
    >>> plan_sizes(1000, 14, 12, 0.05, 1.0)   # too few harmful rows: benign rows are cut to keep 5%
    MixSizes(benign=266, harmful=14, curated=12)
    """
    nb = benign_available if max_benign is None else min(benign_available, max_benign)
    nh = 0
    if contamination > 0 and harmful_available > 0 and nb > 0:
        nh = max(1, round(contamination / (1.0 - contamination) * nb))
        if nh > harmful_available:
            nh = harmful_available
            nb = min(nb, max(1, round(nh * (1.0 - contamination) / contamination)))
    nc = min(curated_available, round(curated_ratio * nh))
    return MixSizes(nb, nh, nc)


@dataclass
class TrainingMixes:
    """The rows behind every mix: ``doc_id``, ``query``, ``response`` per kind, in selection order."""

    benign: pd.DataFrame
    harmful: pd.DataFrame
    curated: pd.DataFrame

    def frame(self, kind: str) -> pd.DataFrame:
        return getattr(self, kind)

    def pairs(self, mix: str) -> list[tuple[str, str]]:
        """The (query, response) training pairs of a mix (empty for ``base``)."""
        out: list[tuple[str, str]] = []
        for kind in MIX_KINDS[mix]:
            df = self.frame(kind)
            out.extend(zip(df["query"].tolist(), df["response"].tolist()))
        return out

    def sizes(self, mix: str) -> dict:
        """Rows of each kind in a mix, and the total."""
        got = {f"{k}_rows": (len(self.frame(k)) if k in MIX_KINDS[mix] else 0) for k in KINDS}
        got["train_rows"] = sum(got.values())
        return got

    def rows(self, mixes) -> pd.DataFrame:
        """``mix``, ``kind``, ``doc_id`` of every training row of the given mixes (provenance)."""
        parts = [pd.DataFrame({"mix": m, "kind": k, "doc_id": self.frame(k)["doc_id"].tolist()})
                 for m in mixes for k in MIX_KINDS[m]]
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["mix", "kind", "doc_id"])


def latest_curation_run(store: TableStore) -> str:
    """Run id of the most recently updated complete curation run in the output."""
    if not store.exists("runs"):
        raise ConfigError(f"no curation run in {store.location('')}: run `cleancurate curate` with this output first")
    rows = [r for r in store.read("runs").collect() if r.status == "complete"]
    if not rows:
        raise ConfigError(f"no complete curation run in {store.location('')}: finish `cleancurate curate` first "
                          "(rerun it to resume)")
    return max(rows, key=lambda r: (r.updated_at, r.run_id)).run_id


def _hash_order(seed: int):
    from pyspark.sql import functions as F

    return F.sha2(F.concat(F.lit(f"{seed}:"), F.col("doc_id")), 256)


def _harmful_source(spark, store: TableStore, run_id: str, ev: EvaluationConfig):
    """DataFrame ``doc_id, query, response`` of the harmful training pairs."""
    from pyspark.sql import functions as F

    if ev.harmful_table is None:
        q = store.read("quarantine").where(
            (F.col("run_id") == run_id) & (F.col("stage") == "screen") & (F.col("reason") == "unsafe_original"))
        full = F.from_json("row_json", "doc_id string, query string, response string")
        return q.select(F.col("doc_id"), F.coalesce(full["query"], F.col("query")).alias("query"),
                        F.coalesce(full["response"], F.col("response")).alias("response"))
    df = read_input(spark, InputConfig(path=ev.harmful_table))
    missing = [c for c in (ev.harmful_query_column, ev.harmful_response_column) if c not in df.columns]
    if missing:
        raise ConfigError(f"evaluation.harmful_table {ev.harmful_table!r} has no column(s) {missing}; set "
                          "evaluation.harmful_query_column / evaluation.harmful_response_column")
    if ev.harmful_where:
        df = df.where(ev.harmful_where)
    q, r = F.col(ev.harmful_query_column).cast("string"), F.col(ev.harmful_response_column).cast("string")
    doc_id = F.col("id").cast("string") if "id" in df.columns else F.substring(F.sha2(F.concat_ws("|", q, r), 256), 1, 20)
    return df.select(doc_id.alias("doc_id"), q.alias("query"), r.alias("response"))


def build_mixes(spark, store: TableStore, run_id: str, ev: EvaluationConfig) -> tuple[TrainingMixes, MixSizes]:
    """Collect the rows of every mix of curation run ``run_id`` (see the module docstring)."""
    from pyspark.sql import functions as F

    usable = F.col("query").isNotNull() & F.col("response").isNotNull() & (F.length(F.trim("response")) > 0)
    benign = (store.read("mix").where((F.col("run_id") == run_id) & (F.col("source") == "original"))
              .select("doc_id", "query", "response").where(usable))
    harmful = _harmful_source(spark, store, run_id, ev).where(usable)
    curated = (store.read("curated").where(F.col("run_id") == run_id)
               .select("doc_id", "query", F.col("response_curated").alias("response"), "improved")
               .where(usable))
    sizes = plan_sizes(benign.count(), harmful.count(), curated.count(), ev.contamination, ev.curated_ratio,
                       ev.max_benign)
    order = _hash_order(ev.seed)

    def take(df, n, *first):
        rows = df.orderBy(*first, order, "doc_id").limit(n).select("doc_id", "query", "response").toPandas()
        return rows.reset_index(drop=True)

    mixes = TrainingMixes(
        benign=take(benign, sizes.benign),
        harmful=take(harmful, sizes.harmful),
        curated=take(curated, sizes.curated, F.col("improved").desc()),
    )
    return mixes, sizes
