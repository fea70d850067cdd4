"""The retry budget: at most ratio × requests plus a floor per second, over a sliding window."""

from balancer.forwarding.retry_budget import RetryBudget


def test_a_quiet_model_may_still_retry_a_few_per_second() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=3, window=10)
    allowed = sum(budget.try_withdraw(0.5) for _ in range(100))
    assert allowed == 30  # 3 per second over the 10 s window


def test_retries_add_at_most_ratio_to_busy_traffic() -> None:
    budget = RetryBudget(ratio=0.2, min_per_second=0, window=10)
    for _ in range(1000):
        budget.deposit(1.0)
    allowed = sum(budget.try_withdraw(1.0) for _ in range(1000))
    assert allowed == 200


def test_the_window_slides() -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=1, window=10)
    assert sum(budget.try_withdraw(0.0) for _ in range(20)) == 10
    assert not budget.try_withdraw(9.9)
    assert budget.try_withdraw(10.0)  # the first second's retries left the window
