"""Simulated users: tastes are distributions that drift, clicks follow taste and position."""

from __future__ import annotations

import numpy as np
import pytest

from simulation.users import SimulatedUsers, UserModelSpec


def _users(**kw) -> SimulatedUsers:
    return SimulatedUsers(UserModelSpec(n_users=50, n_categories=8, seed=3, **kw))


def test_taste_is_a_distribution_that_moves_over_time_and_is_reproducible() -> None:
    users = _users(drift_period_s=100.0)
    t0 = users.taste(7, 0.0)
    assert t0.shape == (8,) and t0.min() >= 0 and t0.sum() == pytest.approx(1.0)
    assert np.abs(users.taste(7, 10.0) - t0).sum() < np.abs(users.taste(7, 300.0) - t0).sum()
    assert np.array_equal(_users(drift_period_s=100.0).taste(7, 123.0), users.taste(7, 123.0))
    assert not np.allclose(users.taste(8, 0.0), t0)


def test_liked_categories_are_clicked_more_and_lower_positions_less() -> None:
    users = _users()
    taste = users.taste(0, 0.0)
    eye = np.eye(8)
    best, worst = eye[[int(np.argmax(taste))]], eye[[int(np.argmin(taste))]]
    assert users.click_probability(0, best, 0.0)[0] > users.click_probability(0, worst, 0.0)[0]
    same = np.repeat(best, 5, axis=0)
    p = users.click_probability(0, same, 0.0)
    assert np.all(np.diff(p) < 0)


def test_empirical_click_rate_matches_the_probability() -> None:
    users = _users()
    cats = np.eye(8)[[0, 3, 5]]
    p = users.click_probability(4, cats, 50.0)
    rng = np.random.default_rng(0)
    draws = np.mean([users.clicks(4, cats, 50.0, rng) for _ in range(20_000)], axis=0)
    assert np.allclose(draws, p, atol=0.01)


def test_bad_shapes_and_users_are_rejected() -> None:
    users = _users()
    with pytest.raises(ValueError, match="item_categories"):
        users.click_probability(0, np.ones((3, 5)), 0.0)
    with pytest.raises(IndexError):
        users.taste(50, 0.0)
    with pytest.raises(ValueError):
        UserModelSpec(n_users=1, n_categories=1)
