"""pass@k: the chance that at least one of k samples is right, estimated from n >= k samples.

Chen et al. 2021 ("Evaluating Large Language Models Trained on Code", §2.1): draw n samples
per problem, count the c right ones, and estimate pass@k by 1 - C(n-c, k) / C(n, k), the
probability that k samples drawn without replacement from those n are all wrong, subtracted
from one. It is unbiased, unlike 1 - (1 - c/n)^k, and with n = k it is simply "any of the n
was right". Accuracy after RL is usually reported as greedy accuracy plus pass@k: RL sharpens
what the model can already sample (pass@k well above greedy), so pass@k bounds what it can
gain (Yue et al. 2025, "Does Reinforcement Learning Really Incentivize Reasoning Capacity").

    pass_at_k(n=8, c=2, k=1)    # 0.25: one sample is right a quarter of the time
    mean_pass_at_k([(8, 0), (8, 3)], k=8)   # 0.5: half the problems had a right sample

Run the tests: `pytest lmstack/eval/pass_at_k.py --doctest-modules`.
"""

from __future__ import annotations

from collections.abc import Iterable
from math import comb

from lmstack.errors import ConfigError


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased estimate of pass@k from n samples of which c are right.

    >>> pass_at_k(8, 2, 1), pass_at_k(8, 0, 8), pass_at_k(8, 1, 8)
    (0.25, 0.0, 1.0)
    >>> round(pass_at_k(10, 3, 5), 4)  # 1 - C(7, 5) / C(10, 5) = 1 - 21/252
    0.9167
    >>> pass_at_k(4, 1, 8)
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: pass@8 needs at least 8 samples per problem, got 4; sample more
    """
    if not 0 <= c <= n:
        raise ConfigError(f"{c} right samples out of {n} is not a count; 0 <= c <= n")
    if k < 1 or n < k:
        raise ConfigError(f"pass@{k} needs at least {k} samples per problem, got {n}; sample more")
    if n - c < k:
        return 1.0  # every k-subset holds a right sample
    return 1.0 - comb(n - c, k) / comb(n, k)


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """pass@k averaged over problems, each given as (samples n, right c).

    >>> mean_pass_at_k([(8, 0), (8, 3)], k=8)
    0.5
    """
    values = [pass_at_k(n, c, k) for n, c in counts]
    if not values:
        raise ConfigError("pass@k of no problems: give at least one (n, c)")
    return sum(values) / len(values)
