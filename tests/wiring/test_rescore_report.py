"""What ``evostream rescore`` prints, from verdicts: the counts, precision and recall on labelled traces (n/a where
there is nothing to divide by), and every trace whose verdict changed."""

from __future__ import annotations

from evostream.wiring.rescore import Rescored, Verdict


def test_the_report_counts_scores_and_lists_changed_verdicts() -> None:
    done = Rescored(
        "risk/fam@1",
        [
            Verdict("a", "fam@1", 1, 0.9, "WARNING", None, True),
            Verdict("b", "fam@1", 2, 0.2, None, "WARNING", False),
            Verdict("c", "fam@1", 3, 0.7, "CRITICAL", "CRITICAL", True),
            Verdict("d", "fam@1", 4, 0.1, None, None, None),
        ],
    )
    lines = done.lines()
    assert lines[0] == "policy risk/fam@1: 4 traces replayed; would alert on 2, alerted on 2"
    assert lines[1] == "  would on 3 labelled (2 wrong): precision 1.000, recall 1.000"
    assert lines[2] == "  did   on 3 labelled (2 wrong): precision 0.500, recall 0.500"
    assert lines[3] == "  2 traces whose verdict changed:"
    assert lines[4] == "    a fam@1: - -> WARNING score 0.9000 (labelled wrong)"
    assert lines[5] == "    b fam@1: WARNING -> - score 0.2000 (labelled right)"


def test_nothing_to_divide_by_is_said_as_n_a() -> None:
    lines = Rescored("hand-set", [Verdict("a", "m@1", 1, 0.1, None, None, False)]).lines()
    assert lines[1] == "  would on 1 labelled (0 wrong): precision n/a, recall n/a"
