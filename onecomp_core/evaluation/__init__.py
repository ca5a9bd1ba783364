"""How good a (quantized) model is: perplexity, multiple-choice accuracy, lm-eval tasks.

- :mod:`.perplexity` — the project's perplexity protocol;
- :mod:`.choices` — zero-shot multiple-choice accuracy by log-likelihood;
- :mod:`.harness` — lm-eval-harness tasks (optional extra);
- :mod:`.scoring` — per-token log-probabilities, shared by the above.
"""

from .choices import AccuracyResult, calculate_accuracy
from .harness import calculate_lm_eval
from .perplexity import PerplexityResult, calculate_perplexity, read_text

__all__ = [
    "AccuracyResult",
    "PerplexityResult",
    "calculate_accuracy",
    "calculate_lm_eval",
    "calculate_perplexity",
    "read_text",
]
