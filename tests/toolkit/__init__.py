"""The one test toolkit: every test module takes its models, oracles, counters and strategies from here, so that a
fix to one (a cache keyed by a dead model's id, a chi-square quantile) reaches every test that relies on it.

- `models`: the one cache of tiny HF models built from configs (`target_model`, `draft_model`), plus `build`,
  `perturbed` and `VOCAB` of `tests.tiny_models`.
- `oracle`: the plain-greedy oracle (transformers' own `generate`, one prompt alone, with any generation settings,
  on the model's device, through PEFT wrappers), `left_pad`, and the stop ids of a free run.
- `counting`: `ForwardCount` (the forwards modules really run) and `unique_graphs` (what dynamo compiled).
- `distributions`: the chi-square test (`chi_square_limit`, `chi_square_rejects`, `assert_distributed_as`), the
  enumerated exact joint law and `check_sampling_law`.
- `strategies`: Hypothesis strategies that draw the prompts themselves (token lists), so that a failure shrinks to
  a short prompt, and the request dicts the end-to-end properties take.
"""

from tests.toolkit.counting import ForwardCount, unique_graphs
from tests.toolkit.distributions import (assert_distributed_as, check_sampling_law, chi_square_limit,
                                         chi_square_rejects, enumerated_joint)
from tests.toolkit.models import DRAFTS, VOCAB, build, draft_model, perturbed, target_model
from tests.toolkit.oracle import (draw_stop_ids, free_run_tokens, left_pad, most_frequent_token, plain_greedy,
                                  reference_drafts)

__all__ = ["DRAFTS", "VOCAB", "ForwardCount", "assert_distributed_as", "build", "check_sampling_law",
           "chi_square_limit", "chi_square_rejects", "draft_model", "draw_stop_ids", "enumerated_joint",
           "free_run_tokens", "left_pad", "most_frequent_token", "perturbed", "plain_greedy", "reference_drafts",
           "target_model", "unique_graphs"]
