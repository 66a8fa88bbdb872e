"""SparkSession: reuse the platform's, or build a local one with Delta configured.

On Databricks or a cluster launched by spark-submit, a session is already active
(or the launcher configured one); it is reused as it is and nothing the platform
owns is changed. Only when no session exists is a local one built, with Delta's
JVM jars resolved from Maven Central at the version matching the installed
delta-spark and pyspark (or taken from ``CLEANCURATE_SPARK_JARS``, a comma list of
local jar paths, for machines without Maven access).
"""

from __future__ import annotations

import os
import sys
from importlib.metadata import version

DELTA_SQL_EXT = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"


def delta_maven_coordinate() -> str:
    """Maven coordinate of Delta's JVM artifact for the installed delta-spark/pyspark pair.

    Since Delta 4.1 the artifact name carries Spark's major.minor version
    (``delta-spark_4.1_2.13``).
    """
    import pyspark

    delta_v = version("delta-spark")
    spark_mm = ".".join(pyspark.__version__.split(".")[:2])
    major, minor = (int(x) for x in delta_v.split(".")[:2])
    artifact = f"delta-spark_{spark_mm}_2.13" if (major, minor) >= (4, 1) else "delta-spark_2.13"
    return f"io.delta:{artifact}:{delta_v}"


def active_session():
    """The active SparkSession, or None."""
    from pyspark.sql import SparkSession

    return SparkSession.getActiveSession()


def get_spark(master: str = "local[2]", app_name: str = "cleancurate", conf: dict[str, str] | None = None):
    """Return the active session, or build a local one with Delta and Arrow on.

    Args:
        master: master URL for a new local session.
        app_name: application name for a new session.
        conf: extra Spark settings for a new session (ignored when reusing one).
    """
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    if spark is not None:
        return spark
    if os.environ.get("SPARK_ENV_LOADED") or os.environ.get("DATABRICKS_RUNTIME_VERSION"):
        # launched by spark-submit: the JVM (and its --packages) already exists; add only
        # the Delta SQL settings the launcher did not set, and never the master
        from pyspark import SparkConf

        launched = SparkConf()
        if launched.get("spark.master", "").startswith("local"):
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = SparkSession.builder.appName(app_name)
        for key, value in (("spark.sql.extensions", DELTA_SQL_EXT), ("spark.sql.catalog.spark_catalog", DELTA_CATALOG),
                           ("spark.sql.execution.arrow.pyspark.enabled", "true")):
            if not launched.contains(key):
                builder = builder.config(key, value)
        return builder.getOrCreate()
    else:
        builder = SparkSession.builder.master(master).appName(app_name)
        # local workers must run this interpreter (the venv), not whatever python3 is on PATH
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    settings = {
        "spark.sql.extensions": DELTA_SQL_EXT,
        "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.python.worker.reuse": "true",
        "spark.sql.shuffle.partitions": "4",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.databricks.delta.snapshotPartitions": "2",
        "spark.ui.enabled": "false",
        "spark.driver.memory": "3g",
    }
    jars = os.environ.get("CLEANCURATE_SPARK_JARS")
    if jars:
        settings["spark.jars"] = jars
    else:
        settings["spark.jars.packages"] = delta_maven_coordinate()
    settings.update(conf or {})
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("CLEANCURATE_SPARK_LOG_LEVEL", "ERROR"))
    return spark
