"""The candidate scorer: every quality signal of a candidate in one pass.

:func:`score_candidates` gives, per (query, candidate, original), the columns of
the candidate contract (:mod:`cleancurate.schemas.candidate`): text statistics (:mod:`cleancurate.textrules`),
perplexity and retention (:mod:`~cleancurate.engine.perplexity`), embedding signals
(:mod:`~cleancurate.engine.embedding`), the configured harm check
(:mod:`~cleancurate.engine.harm`: the head from the same embeddings, or the guard model),
helpfulness (embedding relevance or the LLM judge, :mod:`~cleancurate.engine.judge`) and
the first error. The scorer UDF runs them in one Python worker so each executor process
imports torch and holds the models once, instead of once per chained UDF.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from cleancurate.batching import resolve_score_compile, resolve_scoring_budget
from cleancurate.engine.embedding import embed_scores_batch
from cleancurate.engine.harm import backend as harm_backend
from cleancurate.engine.harm import check_batch, harm_head
from cleancurate.engine.judge import judge_batch
from cleancurate.engine.served import ServedModel
from cleancurate.engine.served_scoring import judge_batch_served
from cleancurate.engine.perplexity import retention_batch, score_batch
from cleancurate.gate import GateSettings, needs
from cleancurate.schemas.candidate import SCORE_NAMES
from cleancurate.textrules import quality_batch

if TYPE_CHECKING:
    from cleancurate.config import Config

#: gate inputs the scorer does not know: the copy flag (decided across candidates afterwards) and the references
_UNKNOWN = ("dup", "ref_harm", "ref_readability", "ref_helpfulness", "ref_ppl", "ref_safety")


def _first_error(*cols: pd.Series) -> pd.Series:
    out = pd.Series([None] * len(cols[0]), dtype=object)
    for col in cols:
        col = col.reset_index(drop=True)
        fill = out.isna() & col.notna()
        out[fill] = col[fill]
    return out


def score_candidates(
    lm, encoder, judge, queries, texts, originals, *, strip: bool, cfg: Config, guard=None,
) -> pd.DataFrame:
    """All signals for each (query, candidate, original), in input order, as the candidate contract lists them.

    Args:
        lm: the causal LM (``LoadedModel``) used for perplexity.
        encoder: the sentence encoder (``LoadedModel``).
        judge: the judge LM (``LoadedModel``) or None for embedding relevance.
        strip: strip a leading preamble before scoring (candidates yes, originals no).
        cfg: the configuration (``metrics``, ``gate``, ``harm``, ``runtime``, ``model.max_context``).
        guard: the guard model (``LoadedModel``) when ``harm.backend`` is ``guard``.
    """
    m, g, r = cfg.metrics, cfg.gate, cfg.runtime
    q = quality_batch(texts, originals, queries=queries, formula=m.readability, ngram=g.ngram,
                      meta_patterns=tuple(g.meta_patterns), max_question_share=g.max_question_share)
    if not strip:
        q["clean_text"] = list(texts)
        q["stripped_preamble"] = False
        q["meta_text"] = None
        q["form_fault"] = None
        q["coverage"] = 1.0
    clean = q["clean_text"].tolist()
    score_kw = dict(token_budget=resolve_scoring_budget(lm.model, r.token_budget),
                    compile=resolve_score_compile(lm.model, r.score_compile),
                    max_context=cfg.model.max_context, stride=r.score_stride)
    p = score_batch(lm.model, lm.tokenizer, queries, clean, **score_kw)
    kind = harm_backend(cfg.harm)
    e = embed_scores_batch(encoder.model, encoder.tokenizer, queries, clean, originals, g.safety_anchor,
                           m.helpful_anchor, m.unhelpful_anchor,
                           harm_head=harm_head(cfg.harm) if kind == "head" else None)
    if kind == "guard":  # the head reads the embeddings above; the guard model is a pass of its own
        gm = getattr(guard, "model", None)  # a served guard holds no weights here
        others = {id(x.model): x.model for x in (lm, encoder, judge)
                  if getattr(x, "model", None) is not None and x.model is not gm}
        h = check_batch(cfg.harm, r, encoder, guard, queries, clean, beside=list(others.values()))
        e["harm"] = h["harm"].to_numpy()
        e["error"] = _first_error(e["error"], h["error"]).to_numpy()
    ret = pd.DataFrame({"retention": [float("nan")] * len(clean), "error": [None] * len(clean)})
    if strip:
        # the second forward pass is spent only where the gate still needs it: no earlier rule already rejects
        settings = GateSettings.from_config(cfg)
        known = pd.concat([q.drop(columns=["error"]).reset_index(drop=True),
                           e[["similarity", "safety", "harm"]].reset_index(drop=True),
                           p[["ppl"]].reset_index(drop=True)], axis=1)
        known["text"] = known["clean_text"]
        known["error"] = _first_error(p["error"], e["error"])
        todo = [i for i, row in enumerate(known.to_dict("records")) if needs(row, settings, "retention", _UNKNOWN)]
        if todo:
            part = retention_batch(lm.model, lm.tokenizer, [queries[i] for i in todo], [clean[i] for i in todo],
                                   [originals[i] for i in todo], **score_kw)
            ret.loc[todo, "retention"] = part["retention"].to_numpy()
            ret.loc[todo, "error"] = part["error"].to_numpy()
    if isinstance(judge, ServedModel):
        j = judge_batch_served(judge.client, judge.tokenizer, queries, clean, template=m.judge_prompt,
                               rubrics=m.judge_rubrics, min_digit_mass=m.judge_min_digit_mass, k=judge.top_logprobs)
        helpfulness, judge_err = j["helpfulness"], j["error"]
    elif judge is not None:
        j = judge_batch(judge.model, judge.tokenizer, queries, clean, template=m.judge_prompt,
                        rubrics=m.judge_rubrics, min_digit_mass=m.judge_min_digit_mass,
                        token_budget=max(resolve_scoring_budget(judge.model, r.token_budget), 2048))
        helpfulness, judge_err = j["helpfulness"], j["error"]
    else:
        helpfulness = e["relevance"] + m.style_weight * e["style"]
        judge_err = pd.Series([None] * len(clean), dtype=object)
    out = pd.concat([q.reset_index(drop=True), p[["ppl", "scored_tokens"]].reset_index(drop=True),
                     ret[["retention"]].reset_index(drop=True),
                     e[["relevance", "similarity", "safety", "harm"]].reset_index(drop=True)], axis=1)
    out["helpfulness"] = helpfulness.reset_index(drop=True).astype("float64")
    out["error"] = _first_error(q["error"], p["error"], ret["error"], e["error"], judge_err)
    return out[list(SCORE_NAMES)]
