"""Input validation: schema errors that stop the job, row rules that quarantine."""

import pytest

from cleancurate import config as C
from cleancurate.tables import InputError
from cleancurate.jobs.curation.validate import check_schema, validate

pytestmark = pytest.mark.spark


def cfg(*overrides):
    return C.load("demo", list(overrides))


def test_missing_response_column_names_the_column_and_the_fix(spark):
    df = spark.createDataFrame([("1", "q", "a")], "id string, query string, answer string")
    with pytest.raises(InputError) as err:
        check_schema(df, cfg())
    msg = str(err.value)
    assert "input has no column 'response' (input.response_column)" in msg
    assert "columns are ['answer', 'id', 'query']" in msg
    assert "set input.response_column to the column that holds it" in msg
    check_schema(df, cfg("input.response_column=answer"))  # the fix works


def test_missing_id_column_suggests_deriving_ids(spark):
    df = spark.createDataFrame([("q", "a")], "query string, response string")
    with pytest.raises(InputError, match="input has no column 'id' \\(input.id_column\\).*or to null to derive ids"):
        check_schema(df, cfg())
    check_schema(df, cfg("input.id_column=null"))


def test_mistyped_text_column_names_the_type_and_the_cast(spark):
    df = spark.createDataFrame([("1", "q", 42)], "id string, query string, response int")
    with pytest.raises(InputError, match=r"column 'response' has type int; it must be string \(or UTF-8 binary\): "
                                         r"cast it first, e.g. df.withColumn\('response'"):
        check_schema(df, cfg())


def test_mistyped_id_column(spark):
    df = spark.createDataFrame([(1.5, "q", "a")], "id double, query string, response string")
    with pytest.raises(InputError, match="column 'id' \\(input.id_column\\) has type double; ids must be string or integer"):
        check_schema(df, cfg())


def test_duplicate_ids_are_an_error_by_default(spark):
    df = spark.createDataFrame([("1", "q", "a"), ("1", "q2", "b")], "id string, query string, response string")
    with pytest.raises(InputError, match=r"column 'id' holds duplicate ids, e.g. \['1'\].*input.duplicate_ids: drop"):
        validate(df, cfg())


def test_binary_columns_are_decoded_and_bad_bytes_quarantined(spark):
    rows = [("1", b"How do I boil an egg?", "Boil it for nine minutes.".encode()),
            ("2", b"Decode me", b"\xff\xfe\x00garbage\xc3")]
    df = spark.createDataFrame(rows, "id string, query binary, response binary")
    v = validate(df, cfg())
    valid = {r.doc_id: r for r in v.valid.collect()}
    bad = {r.doc_id: r.reason for r in v.quarantine.collect()}
    assert valid["1"].response == "Boil it for nine minutes."
    assert bad == {"2": "undecodable"}


def test_text_column_with_split_pattern_and_content_ids(spark):
    rows = [("Q: How do I boil an egg?\nA: Nine minutes in boiling water.",), ("no separator here",)]
    df = spark.createDataFrame(rows, "text string")
    v = validate(df, cfg("input.text_column=text", r"input.split_pattern=(?s)^Q: (.*?)\nA: (.*)$",
                         "input.id_column=null"))
    (good,) = v.valid.collect()
    assert (good.query, good.response) == ("How do I boil an egg?", "Nine minutes in boiling water.")
    assert len(good.doc_id) == 24
    (bad,) = v.quarantine.collect()
    assert bad.reason == "split_failed"
