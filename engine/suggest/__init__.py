"""A first draft of the anchored-terms dictionary (algorithm step 2), for the user to review.

Two routes, one result shape (`Suggestions`: term -> candidate generic translations, with evidence):
- engine/suggest/llm.py: any OpenAI-compatible chat endpoint reads the corpus in chunks and returns,
  per chunk, the idiosyncratic expressions copied exactly with a generic counterpart (the paper's GPT-4 step).
- engine/suggest/offline.py: the models themselves. Word spans whose log-likelihood rises most from
  baseline to expert, or, without an expert, proper names frequent in the corpus but improbable
  under the baseline; generic translations proposed by the baseline through a few-shot prompt.
Both end in the original pipeline's consolidation (`AnchorDictionary.consolidate`). Nothing here
writes the user's dictionary: the caller saves accepted rows explicitly.
"""
from .base import SuggestProgress, Suggestion, Suggestions, accept_rows, consolidated, evidence, split_chunks  # noqa: F401
from .llm import LLMConfig, parse_reply, suggest_llm  # noqa: F401 - the two routes, one import away
from .offline import propose_translations, suggest_offline  # noqa: F401
