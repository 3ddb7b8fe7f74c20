"""pass@k against its definition: the share of k-subsets of the n samples that hold a right one."""

import itertools

from hypothesis import given
from hypothesis import strategies as st

from lmstack.eval.pass_at_k import pass_at_k


@given(st.integers(1, 9).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_is_the_share_of_k_subsets_with_a_right_sample(nck):
    n, c, k = nck
    right = set(range(c))  # which samples are right does not matter, only how many
    subsets = list(itertools.combinations(range(n), k))
    share = sum(any(i in right for i in s) for s in subsets) / len(subsets)
    assert abs(pass_at_k(n, c, k) - share) < 1e-12
