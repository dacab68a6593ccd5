"""The funds stand-in's failure plan (devstack.funds.FailurePlan): which requests fail."""

from __future__ import annotations

import pytest

from contracts.charges import ChargeRequest, charge_id_for
from devstack.funds import FailurePlan

T0 = 1_700_000_000_000


def request(order_id: str, attempt: int = 1) -> ChargeRequest:
    return ChargeRequest(charge_id_for(order_id, attempt), order_id, "s1", 100, T0, attempt)


def test_by_default_everything_is_charged() -> None:
    assert all(FailurePlan().reason(request(f"o{n}"), n) is None for n in range(1, 50))


def test_listed_orders_fail_every_attempt_or_their_first_n() -> None:
    always = FailurePlan(orders=frozenset({"o1"}))
    assert always.reason(request("o1", 5), 1) == "insufficient funds (stand-in: failing order)"
    assert always.reason(request("o2"), 1) is None
    twice = FailurePlan(orders=frozenset({"o1"}), attempts=2)
    assert [twice.reason(request("o1", a), a) is None for a in (1, 2, 3)] == [False, False, True]


def test_flaky_orders_fail_only_their_first_attempt() -> None:
    plan = FailurePlan(flaky=frozenset({"o1"}))
    assert plan.reason(request("o1", 1), 1) == "temporarily unavailable (stand-in: flaky order)"
    assert plan.reason(request("o1", 2), 2) is None


def test_every_nth_distinct_request_fails() -> None:
    plan = FailurePlan(every=3)
    failing = [n for n in range(1, 10) if plan.reason(request(f"o{n}"), n)]
    assert failing == [3, 6, 9]


def test_a_seeded_ratio_fails_about_that_share_the_same_way_every_time() -> None:
    plan = FailurePlan(ratio=0.25, seed=7)
    failing = {n for n in range(4000) if plan.reason(request(f"o{n}"), n + 1)}
    assert 900 < len(failing) < 1100
    assert failing == {n for n in range(4000) if plan.reason(request(f"o{n}"), 1)}, \
        "by charge id, not by arrival"
    other = {n for n in range(4000) if FailurePlan(ratio=0.25, seed=8).reason(
        request(f"o{n}"), 1)}
    assert other != failing
    assert all(FailurePlan(ratio=1.0).reason(request(f"o{n}"), 1) for n in range(100))


@pytest.mark.parametrize("bad", [{"attempts": 0}, {"every": -1}, {"ratio": 1.5},
                                 {"ratio": -0.1}])
def test_a_bad_plan_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        FailurePlan(**bad)  # type: ignore[arg-type]
