from __future__ import annotations

import pytest

from evostream.schemas.catalog import ALERTS, COMPLETIONS, OUTCOMES
from evostream.views.rollout import CANDIDATE_ROLES, RolloutFold
from tests.rollout.traffic import Traffic, alert, completion, outcome

INC, CAND = "m@incumbent", "m@candidate"
T0 = 1_800_000_000_000_000


def folded(traffic: Traffic) -> RolloutFold:
    fold = RolloutFold()
    for topic, rec in traffic.records:
        fold.add(topic, rec)
    return fold


def test_a_versions_window_counts_its_answers_alerts_errors_labels_and_latency() -> None:
    t = Traffic()
    t.answers(INC, 100, T0, alerted=5, errors=2, labelled=40, right=32, latency_ms=50.0)
    t.answers(CAND, 20, T0, alerted=3, errors=1, labelled=10, right=6, latency_ms=70.0)
    t.answers(CAND, 10, T0, role="SHADOW", alerted=1, labelled=0, latency_ms=90.0)
    fold = folded(t)
    inc = fold.stats(INC, T0)
    assert (inc.answers, inc.alerted, inc.errors, inc.labelled, inc.correct) == (100, 5, 2, 40, 32)
    assert len(inc.latency_ms) == 98 and inc.latency(95) == pytest.approx(50.0)
    cand = fold.stats(CAND, T0, roles=CANDIDATE_ROLES)
    assert (cand.answers, cand.alerted, cand.errors, cand.labelled, cand.correct) == (30, 4, 1, 10, 6)
    # a shadow answer's generation time is not comparable with an answer's: only the canary's count
    assert sorted(set(cand.latency_ms)) == [70.0] and len(cand.latency_ms) == 19
    assert fold.stats(CAND, T0).answers == 20  # its returned answers only


def test_the_window_is_the_answers_completed_in_it_whenever_their_alerts_and_labels_came() -> None:
    fold = RolloutFold()
    before = completion("old", CAND, T0 - 1)
    inside = completion("new", CAND, T0 + 5)
    late_alert = alert("new", CAND, T0 + 10**9)  # read before its answer: topics are read apart
    fold.add(ALERTS, late_alert)
    fold.add(COMPLETIONS, before)
    fold.add(COMPLETIONS, inside)
    fold.add(ALERTS, alert("old", CAND, T0))
    fold.add(OUTCOMES, outcome("new", CAND, False, T0 + 10**9))
    s = fold.stats(CAND, T0)
    assert (s.answers, s.alerted, s.labelled, s.correct) == (1, 1, 1, 0)
    assert fold.stats(CAND, T0 - 1, T0).answers == 1


def test_duplicates_cache_hits_and_partials_are_not_answers() -> None:
    fold = RolloutFold()
    rec = completion("a", CAND, T0)
    fold.add(COMPLETIONS, rec)
    fold.add(COMPLETIONS, rec)  # delivered twice
    fold.add(ALERTS, alert("a", CAND, T0))
    fold.add(ALERTS, alert("a", CAND, T0 + 1))  # EARLY then FINAL
    fold.add(COMPLETIONS, completion("b", CAND, T0, cached=True, cached_from="a"))
    fold.add(COMPLETIONS, completion("c", CAND, T0, finish_reason="ESCALATED"))
    s = fold.stats(CAND, T0)
    assert (s.answers, s.alerted) == (1, 1)


def test_a_label_changed_by_its_actor_counts_as_it_stands() -> None:
    fold = RolloutFold()
    fold.add(COMPLETIONS, completion("a", CAND, T0))
    fold.add(OUTCOMES, outcome("a", CAND, False, T0 + 1, actor="ann"))
    fold.add(OUTCOMES, outcome("a", CAND, True, T0 + 2, actor="ann"))
    s = fold.stats(CAND, T0)
    assert (s.labelled, s.correct) == (1, 1)


def test_shadow_comparisons_summarise_agreement_and_both_sides() -> None:
    t = Traffic()
    prod = t.answers(INC, 10, T0)
    shadow = t.answers(CAND, 10, T0, role="SHADOW")
    t.compare(INC, CAND, list(zip(prod, shadow, strict=True)), T0, agree=7)
    s = folded(t).shadow(INC, CAND, T0)
    assert s["comparisons"] == 10 and s["agree"] == 7 and s["agreement_rate"] == pytest.approx(0.7)
    assert s["candidate_errors"] == 0
    assert folded(t).shadow(CAND, INC, T0)["comparisons"] == 0


def test_prune_forgets_what_is_older_than_the_window() -> None:
    t = Traffic()
    t.answers(CAND, 5, T0, alerted=5)
    t.answers(CAND, 5, T0 + 10_000, alerted=5)
    fold = folded(t)
    fold.prune(T0 + 10_000)
    assert len(fold) == 5
    assert fold.stats(CAND).alerted == 5
