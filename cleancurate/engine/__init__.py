"""The model engine: batch functions that run a language model or an encoder over lists of text.

Everything here takes a loaded model and tokenizer (:func:`cleancurate.models.get_model`)
and plain lists, and returns a pandas DataFrame in input order; nothing imports pyspark,
so the engine runs in a Spark worker, in the evaluation job's driver, in a benchmark or
in a test with a fake model alike. The UDFs (:mod:`cleancurate.udfs`) are thin shells
around it: a factory that gets the worker's cached models and a Spark wrapper.

Generation:

- :mod:`~cleancurate.engine.prompting`: revision prompts and stop tokens;
- :mod:`~cleancurate.engine.sampling`: exact top-p sampling with per-row settings and seeds;
- :mod:`~cleancurate.engine.kvcache`: KV caches and decode modes (dynamic, static, compiled);
- :mod:`~cleancurate.engine.decode`: the decode loop of one micro-batch;
- :mod:`~cleancurate.engine.refill`: continuous batching;
- :mod:`~cleancurate.engine.generate`: :func:`~cleancurate.engine.generate.generate_batch`,
  micro-batch planning, fallbacks, and what determinism it promises;
- :mod:`~cleancurate.engine.vllm_backend`: the optional vLLM backend.

Scoring:

- :mod:`~cleancurate.engine.perplexity`: perplexity and retention;
- :mod:`~cleancurate.engine.judge`: the digit-probability rubric judge;
- :mod:`~cleancurate.engine.embedding`: embeddings and the signals read from them;
- :mod:`~cleancurate.engine.harm`: the harm check by the configured backend (the harm head
  or a guard model) and the worker's head, format and guard model;
- :mod:`~cleancurate.engine.guard`: safety classifier LMs (Llama Guard 3, ShieldGemma,
  Qwen3Guard) scored from their verdict-token probabilities, formats as data;
- :mod:`~cleancurate.engine.scorer`: every signal of a candidate in one pass.

The submodules import torch and transformers only when a function runs; import the
one you need (``from cleancurate.engine.generate import generate_batch``).
"""
