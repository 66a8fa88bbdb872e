"""Tests of the curation and evaluation jobs (``jobs/``): their decisions as pure functions, their Spark
wiring with fake UDFs, and their stages and parts one at a time (some read the session's shared run)."""
