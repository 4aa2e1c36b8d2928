"""The decision-rule probe (benchmarks/decision_rule.py): the rule fed synthetic scores ends on the best one."""

import numpy as np

from benchmarks import decision_rule, quality  # noqa: F401  (one process: their flags must not clash)


def test_the_rule_ends_on_the_candidate_with_the_largest_score_and_reports_its_state():
    run = decision_rule.simulate([0.01, 0.2], [0.005, 0.05], seed=0, steps=300)
    assert set(run) == {"selection_probability", "weight", "mean_coefficient"}
    assert int(np.argmax(run["mean_coefficient"])) == 1 and run["weight"][1] > 0.6
    np.testing.assert_allclose(sum(run["weight"]), 1.0, rtol=1e-5)


def test_a_score_that_depends_on_the_candidates_presence_is_what_the_rule_sees():
    """Worth 0.2 while out of the mix and -0.2 while in it: the rule cannot keep it (it keeps candidate 0)."""
    run = decision_rule.simulate([0.01, 0.2], [0.0, 0.0], when_selected=[0.01, -0.2], seed=0, steps=300)
    assert int(np.argmax(run["mean_coefficient"])) == 0
