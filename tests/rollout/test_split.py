"""The traffic split: a pure function of the request id and the rollout, whose shares converge to the plan's."""

from __future__ import annotations

import hashlib
import math

import pytest

from evostream.rollout.split import arm, assign, check, staging_salt

N = 20_000
IDS = [f"req-{i:06d}" for i in range(N)]


def within(share: float, expected: float, n: int, sigmas: float = 5.0) -> bool:
    """Whether an observed share is within ``sigmas`` binomial standard deviations of ``expected``."""
    return abs(share - expected) <= sigmas * math.sqrt(max(expected * (1 - expected), 1e-12) / n)


def test_arm_is_the_documented_hash_of_salt_and_id() -> None:
    digest = hashlib.sha256(b"rollout-1\x00req-42").digest()
    assert arm("req-42", "rollout-1") == int.from_bytes(digest[:8], "big") / 2**64
    assert arm("req-42", "rollout-2") != arm("req-42", "rollout-1")
    assert all(0.0 <= arm(i, "r") < 1.0 for i in IDS[:1000])


@pytest.mark.parametrize("weight", [1, 5, 25, 50])
def test_the_candidate_share_converges_to_the_weight(weight: int) -> None:
    share = sum(assign(i, "rollout-a", weight, 0.0) == "CANDIDATE" for i in IDS) / N
    assert within(share, weight / 100, N), f"{share:.4f} of requests at weight {weight}%"


def test_weight_0_and_100_send_none_and_all() -> None:
    assert {assign(i, "r", 0, 0.0) for i in IDS[:2000]} == {"INCUMBENT"}
    assert {assign(i, "r", 100, 0.5) for i in IDS[:2000]} == {"CANDIDATE"}


def test_a_request_keeps_its_arm_and_a_higher_weight_only_adds_requests() -> None:
    at = {w: {i for i in IDS if assign(i, "rollout-b", w, 0.0) == "CANDIDATE"} for w in (1, 5, 25, 50, 100)}
    assert at[1] <= at[5] <= at[25] <= at[50] <= at[100] == set(IDS)
    again = {i for i in IDS if assign(i, "rollout-b", 25, 0.0) == "CANDIDATE"}
    assert again == at[25]  # the same ids, every time: replayable from the log


def test_the_mirror_takes_its_share_of_the_requests_left_to_production_independently() -> None:
    arms = [assign(i, "rollout-c", 20, 0.1) for i in IDS]
    rest = [a for a in arms if a != "CANDIDATE"]
    share = sum(a == "MIRRORED" for a in rest) / len(rest)
    assert within(share, 0.1, len(rest)), f"{share:.4f} of the incumbent's requests mirrored"
    # the weight's draw and the mirror's are independent: the mirror's share is the same at another weight
    rest_50 = [a for a in (assign(i, "rollout-c", 50, 0.1) for i in IDS) if a != "CANDIDATE"]
    assert within(sum(a == "MIRRORED" for a in rest_50) / len(rest_50), 0.1, len(rest_50))


def test_rollouts_draw_anew_and_the_staging_salt_names_the_version() -> None:
    a = {i for i in IDS if assign(i, "rollout-1", 10, 0.0) == "CANDIDATE"}
    b = {i for i in IDS if assign(i, "rollout-2", 10, 0.0) == "CANDIDATE"}
    # independent draws overlap on about 1% of requests (10% of 10%), not on 10%
    assert within(len(a & b) / N, 0.01, N)
    assert staging_salt("m@1") == "staging:m@1"


@pytest.mark.parametrize(("weight", "share"), [(-1, 0.0), (101, 0.0), (5.5, 0.0), (True, 0.0), (5, -0.1), (5, 1.5)])
def test_a_bad_split_is_refused(weight: object, share: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        check(weight, share)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be"):
        assign("x", "r", weight, share)  # type: ignore[arg-type]


def test_nan_shadow_share_is_refused() -> None:
    with pytest.raises(ValueError, match="shadow_share"):
        check(5, float("nan"))
