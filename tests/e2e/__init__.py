"""End-to-end tests: real-model runs of the jobs and their entry points (CLI, spark-submit, notebook)."""
