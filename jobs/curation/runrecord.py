"""The run record: which run this is, how far it got, and resume.

Reads: ``runs`` (every run in the output: this config's row, or another run's that
makes a new config an error without ``new_run``).
Writes: ``runs``: this run's one row (config and hash, model, objective, ``status``,
``last_complete_round``, row counts, started/updated times), replaced whole on every mark.

A round counts as finished only when ``runs.last_complete_round`` says so, and it is
marked after the round's slices are committed: a rerun resumes after that round.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

from cleancurate.config import ConfigError


def utcnow() -> datetime:
    """Now in UTC, without a zone: what the tables' timestamp columns hold."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def run_id_for(config_hash: str) -> str:
    """The run id of a configuration: a run is its config, so a rerun finds its own row."""
    return f"run-{config_hash[:12]}"


def pick_run(rows: list[dict], run_id: str, config_hash: str, new_run: bool, location: str) -> tuple[int, dict | None]:
    """The last complete round (-1 when starting) and the stored row of ``run_id``.

    Args:
        rows: the ``runs`` table's rows as dicts.
        run_id: this configuration's run id.
        config_hash: this configuration's hash (for the error).
        new_run: allow a new run beside other runs in the same output.
        location: the output (for the error).

    Raises:
        ConfigError: the output holds another run and ``new_run`` is not set.
    """
    same = [r for r in rows if r["run_id"] == run_id or (r["config_hash"] == config_hash
                                                         and r["run_id"].startswith(run_id + "-"))]
    if same:  # the latest run of this configuration (a source curated afresh with new_run makes another)
        latest = max(same, key=lambda r: (r.get("started_at") is not None, r.get("started_at") or 0, r["run_id"]))
        return int(latest["last_complete_round"]), latest
    if rows and not new_run:
        other = rows[0]
        raise ConfigError(
            f"output {location} holds run '{other['run_id']}' (config hash {other['config_hash']}); "
            f"this config hashes to {config_hash}. Pass --new-run (new_run=True) to add a run with this config "
            "beside it, or choose another output.path"
        )
    return -1, None


class RunRecord:
    """This run's row of ``runs``: resolved once, then marked after every committed step."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.started_at = None

    def resolve(self, new_run: bool) -> tuple[str, int, dict | None]:
        """Pick the run id, the last complete round (-1 when starting) and the stored run row."""
        ctx = self.ctx
        run_id = run_id_for(ctx.hash)
        if not ctx.store.exists("runs"):
            return run_id, -1, None
        rows = [r.asDict() for r in ctx.store.read("runs").collect()]
        last, stored = pick_run(rows, run_id, ctx.hash, new_run, ctx.store.location(""))
        return (stored["run_id"] if stored else run_id), last, stored

    def fresh_run_id(self) -> str:
        """A new run id for this configuration beside its earlier runs (``--new-run`` over a changed source)."""
        base = run_id_for(self.ctx.hash)
        taken = {r.run_id for r in self.ctx.store.read("runs").select("run_id").collect()}
        n = 2
        while f"{base}-{n}" in taken:
            n += 1
        return f"{base}-{n}"

    def mark(self, counts: dict, last_round: int, status: str, source=None) -> None:
        """Replace this run's row: ``status``, ``last_round`` as the last complete round of the current
        increment, ``counts`` (the whole output's once complete), what the increment read (``source``)."""
        from pyspark.sql import Row

        from cleancurate.schemas import RUNS

        ctx = self.ctx
        if self.started_at is None:
            got = ctx.read("runs").select("started_at").collect() if ctx.store.exists("runs") else []
            self.started_at = got[0].started_at if got else utcnow()
        row = Row(
            run_id=ctx.run_id, config_hash=ctx.hash, config_json=json.dumps(ctx.cfg.to_dict(), sort_keys=True),
            model=ctx.cfg.model.name, objective=ctx.cfg.curation.objective, status=status,
            last_complete_round=last_round, input_rows=counts.get("input_rows"),
            valid_rows=counts.get("valid_rows"), selected_rows=counts.get("selected_rows"),
            curated_rows=counts.get("curated_rows"), quarantined_rows=counts.get("quarantined_rows"),
            mix_rows=counts.get("mix_rows"), started_at=self.started_at, updated_at=utcnow(),
            increment=ctx.increment, source_json=source.to_json() if source is not None else None,
            mlflow_run_id=ctx.mlflow_run_id,
        )
        # one row per run, replaced whole: idempotent like every other write, and cheaper than MERGE
        ctx.write(ctx.spark.createDataFrame([tuple(row[f.name] for f in RUNS.fields)], RUNS), "runs")
