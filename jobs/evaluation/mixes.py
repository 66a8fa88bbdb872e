"""Training mixes built from a curation run's tables.

- **benign**: the run's ``mix`` rows with ``source = 'original'`` (valid rows the
  screen let through and curation did not select), so the curated texts stay out of
  A and C;
- **harmful**: the originals the safety screen flagged (``quarantine``, stage
  ``screen``, reason ``unsafe_original``, full text from ``row_json``), or any table of
  harmful pairs (``evaluation.harmful_table``, filtered by ``harmful_where``);
- **curated**: the ``curated`` rows (``response_curated``) whose original a revision
  replaced (``improved``), of this run or of another output's run
  (``evaluation.curated_output`` / ``curated_run_id``: Buckle Up curates commonsense
  texts from any corpus). A document that kept its original is not a curated text:
  it counts only with ``evaluation.allow_kept_originals``, after every revision, and
  is recorded as kind ``kept_original``.

Mix **A** = benign + harmful, with the harmful share ``evaluation.contamination``
(5% by default: ``harmful = round(c / (1 - c) * benign)``, at least one when any
exists; when there are too few harmful rows the benign rows are cut to keep the
rate). Mix **B** = A + ``curated_ratio`` curated texts per harmful one. Mix **C** =
the benign rows of A alone. ``base`` is the model without fine-tuning. The stages of
Buckle Up's defence train in phases, each phase on a fresh optimizer for
``evaluation.epochs`` epochs: **before** = B's curated texts, then A's rows
(immunize first); **after** = A's rows, then B's curated texts (restore a
compromised model). Every choice of rows is by the hash of ``seed:doc_id``, so the
same run and config always give the same mixes.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from cleancurate.config import ConfigError, EvaluationConfig, InputConfig, OutputConfig
from cleancurate.tables import TableStore, read_input

KINDS = ("benign", "harmful", "curated")
#: each mix's training phases in order, each phase the kinds of rows it trains on together
MIX_PHASES: dict[str, tuple[tuple[str, ...], ...]] = {
    "base": (),
    "A": (("benign", "harmful"),),
    "B": (("benign", "harmful", "curated"),),
    "C": (("benign",),),
    "before": (("curated",), ("benign", "harmful")),
    "after": (("benign", "harmful"), ("curated",)),
}
MIX_KINDS = {m: tuple(k for phase in phases for k in phase) for m, phases in MIX_PHASES.items()}
CURATED_MIXES = tuple(m for m, kinds in MIX_KINDS.items() if "curated" in kinds)


class CuratedShortfallError(ConfigError):
    """The mixes need more curated texts than the curated run replaced (see ``allow_kept_originals``)."""


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


@dataclass(frozen=True)
class CuratedSource:
    """Where the curated texts come from, and how many there are."""

    location: str  # the output folder or table prefix
    run_id: str
    replaced: int  # documents whose original a revision replaced: the curated texts
    kept: int  # documents that kept their original

    def __str__(self) -> str:
        return f"run {self.run_id} in {self.location}"


@dataclass
class TrainingMixes:
    """The rows behind every mix: ``doc_id``, ``query``, ``response`` per kind, in selection order.

    ``curated`` also has ``replaced`` (False for a kept original taken under
    ``allow_kept_originals``).
    """

    benign: pd.DataFrame
    harmful: pd.DataFrame
    curated: pd.DataFrame
    curated_source: CuratedSource | None = None

    def frame(self, kind: str) -> pd.DataFrame:
        return getattr(self, kind)

    def _pairs(self, kinds) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for kind in kinds:
            df = self.frame(kind)
            out.extend(zip(df["query"].tolist(), df["response"].tolist()))
        return out

    def pairs(self, mix: str) -> list[tuple[str, str]]:
        """All (query, response) training pairs of a mix, phase after phase (empty for ``base``)."""
        return self._pairs(MIX_KINDS[mix])

    def phases(self, mix: str) -> list[dict]:
        """The mix's training phases in order: ``{"phase", "kinds", "pairs"}`` each."""
        return [{"phase": i, "kinds": list(kinds), "pairs": self._pairs(kinds)}
                for i, kinds in enumerate(MIX_PHASES[mix], start=1)]

    def kept_originals(self) -> int:
        """Curated rows that are kept originals (``allow_kept_originals``)."""
        return int((~self.curated["replaced"].astype(bool)).sum()) if "replaced" in self.curated else 0

    def sizes(self, mix: str) -> dict:
        """Rows of each kind in a mix, and the total."""
        got = {f"{k}_rows": (len(self.frame(k)) if k in MIX_KINDS[mix] else 0) for k in KINDS}
        got["train_rows"] = sum(got.values())
        return got

    def rows(self, mixes) -> pd.DataFrame:
        """``mix``, ``kind``, ``doc_id``, ``phase`` of every training row of the given mixes (provenance).

        A curated row that is a kept original has kind ``kept_original``.
        """
        parts = []
        for m in mixes:
            for phase, kinds in enumerate(MIX_PHASES[m], start=1):
                for k in kinds:
                    df = self.frame(k)
                    kind = [k] * len(df)
                    if k == "curated" and "replaced" in df:
                        kind = ["curated" if r else "kept_original" for r in df["replaced"].astype(bool)]
                    parts.append(pd.DataFrame({"mix": m, "kind": kind, "doc_id": df["doc_id"].tolist(),
                                               "phase": phase}))
        cols = ["mix", "kind", "doc_id", "phase"]
        return pd.concat(parts, ignore_index=True)[cols] if parts else pd.DataFrame(columns=cols)


def latest_curation_run(store: TableStore) -> str:
    """Run id of the most recently updated complete curation run in the output."""
    if not store.exists("runs"):
        raise ConfigError(f"no curation run in {store.location('')}: run `cleancurate curate` with this output first")
    rows = [r for r in store.read("runs").collect() if r.status == "complete"]
    if not rows:
        raise ConfigError(f"no complete curation run in {store.location('')}: finish `cleancurate curate` first "
                          "(rerun it to resume)")
    return max(rows, key=lambda r: (r.updated_at, r.run_id)).run_id


def output_location(value: str) -> OutputConfig:
    """An output named by one string: a folder (a path, a URI, or a folder that exists), else a
    catalog table prefix such as ``main.lake.commonsense_``."""
    import os
    import re

    if "/" in value or "\\" in value or ":" in value or os.path.exists(value) \
            or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", value):
        return OutputConfig(path=value)
    return OutputConfig(table_prefix=value)


def curated_store(spark, store: TableStore, run_id: str, ev: EvaluationConfig) -> tuple[TableStore, str]:
    """The output and run whose ``curated`` table gives the curated texts (see the module docstring)."""
    if ev.curated_output is None:
        return store, ev.curated_run_id or run_id
    other = TableStore(spark, output_location(ev.curated_output))
    if not other.exists("curated"):
        raise ConfigError(f"evaluation.curated_output {ev.curated_output!r} has no curated table at "
                          f"{other.location('curated')}: name a cleancurate output folder or table prefix")
    return other, ev.curated_run_id or latest_curation_run(other)


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


def build_mixes(spark, store: TableStore, run_id: str, ev: EvaluationConfig, mixes=None,
                curated: tuple[TableStore, str] | None = None) -> tuple[TrainingMixes, MixSizes]:
    """Collect the rows of every mix of curation run ``run_id`` (see the module docstring).

    Args:
        mixes: the mixes still to train (default ``evaluation.mixes``): only they need curated texts.
        curated: the output and run of the curated texts, when already resolved (:func:`curated_store`).

    Raises:
        CuratedShortfallError: a mix to train needs more curated texts than there are
            revisions and ``allow_kept_originals`` is false, or more than there are
            revisions and kept originals together.
    """
    from pyspark.sql import functions as F

    usable = F.col("query").isNotNull() & F.col("response").isNotNull() & (F.length(F.trim("response")) > 0)
    benign = (store.read("mix").where((F.col("run_id") == run_id) & (F.col("source") == "original"))
              .select("doc_id", "query", "response").where(usable))
    harmful = _harmful_source(spark, store, run_id, ev).where(usable)
    cstore, crun = curated or curated_store(spark, store, run_id, ev)
    curated = (cstore.read("curated").where(F.col("run_id") == crun)
               .select("doc_id", "query", F.col("response_curated").alias("response"),
                       F.col("improved").alias("replaced"))
               .where(usable))
    counts = {r.replaced: r["count"] for r in curated.groupBy("replaced").count().collect()}
    source = CuratedSource(cstore.root, crun, int(counts.get(True, 0)),
                           int(counts.get(False, 0)))
    if not ev.allow_kept_originals:
        curated = curated.where(F.col("replaced"))
    available = source.replaced + (source.kept if ev.allow_kept_originals else 0)
    sizes = plan_sizes(benign.count(), harmful.count(), available, ev.contamination, ev.curated_ratio,
                       ev.max_benign)
    need = round(ev.curated_ratio * sizes.harmful)
    users = [m for m in (ev.mixes if mixes is None else mixes) if m in CURATED_MIXES]
    if users and ev.allow_kept_originals and need > available:
        raise CuratedShortfallError(
            f"mix(es) {users} need {need} curated texts (evaluation.curated_ratio {ev.curated_ratio:g} x "
            f"{sizes.harmful} harmful rows) but curation {source} has only {source.replaced} revision(s) and "
            f"{source.kept} kept original(s) even with evaluation.allow_kept_originals; lower "
            "evaluation.curated_ratio or curate more documents")
    if users and need > source.replaced and not ev.allow_kept_originals:
        raise CuratedShortfallError(
            f"mix(es) {users} need {need} curated texts (evaluation.curated_ratio {ev.curated_ratio:g} x "
            f"{sizes.harmful} harmful rows) but curation {source} replaced only {source.replaced} "
            f"original(s) ({source.kept} document(s) kept theirs); set evaluation.allow_kept_originals: true to "
            "fill the gap with kept originals, lower evaluation.curated_ratio, curate more documents, or name a "
            "run with more revisions in evaluation.curated_output")
    order = _hash_order(ev.seed)

    def take(df, n, *first, extra=()):
        rows = df.orderBy(*first, order, "doc_id").limit(n).select("doc_id", "query", "response", *extra)
        return rows.toPandas().reset_index(drop=True)

    mixes = TrainingMixes(
        benign=take(benign, sizes.benign),
        harmful=take(harmful, sizes.harmful),
        curated=take(curated, sizes.curated, F.col("replaced").desc(), extra=("replaced",)),
        curated_source=source,
    )
    return mixes, sizes
