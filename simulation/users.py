"""Hidden user tastes that drift, and the click model they imply.

A user's taste is a probability vector over item categories. Each user walks
through a sequence of taste profiles (Dirichlet draws, seeded per user and
step): at time ``t`` the taste is the linear blend of profile ``k`` and
``k + 1`` with ``k + frac = t / drift_period_s + offset_u`` (a per-user phase,
so not everyone drifts in step). A model trained on yesterday's clicks is
therefore always a little out of date -- the situation online learning exists for.

Click model (position-based, as in click models of web search): a shown item
is examined with probability ``1 / (1 + position_decay * position)`` and,
when examined, clicked with ``sigmoid(logit(base_ctr) + affinity * clip(log m))``
where ``m = n_categories * <taste, item category distribution>`` is the match
relative to an indifferent user (m = 1). Everything is deterministic given the
seed, so two runs (learning on / off) meet exactly the same people.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class UserModelSpec:
    """Who the simulated users are and how they click."""

    n_users: int
    n_categories: int
    base_ctr: float = 0.04  # click probability of an examined item the user is indifferent to
    affinity: float = 1.2  # logit gain per unit of log match
    concentration: float = 0.3  # Dirichlet alpha of a taste profile: small = a few strong categories
    position_decay: float = 0.15  # examination 1 / (1 + decay * position)
    drift_period_s: float = 300.0  # seconds to move from one taste profile to the next
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_users <= 0 or self.n_categories <= 1:
            raise ValueError("UserModelSpec needs n_users >= 1 and n_categories >= 2")
        if not 0.0 < self.base_ctr < 1.0:
            raise ValueError("UserModelSpec.base_ctr must be in (0, 1)")
        if self.drift_period_s <= 0 or self.concentration <= 0 or self.position_decay < 0:
            raise ValueError("UserModelSpec: drift_period_s and concentration must be > 0, position_decay >= 0")


_MAX_LOG_MATCH = 3.0


class SimulatedUsers:
    """Tastes and click probabilities of ``spec.n_users`` users (indices 0..n-1)."""

    def __init__(self, spec: UserModelSpec) -> None:
        self.spec = spec
        self._offsets = np.random.default_rng([spec.seed, 0xD1F7]).random(spec.n_users)
        self._profiles: dict[tuple[int, int], np.ndarray] = {}
        self._base_logit = math.log(spec.base_ctr / (1.0 - spec.base_ctr))

    def _profile(self, user: int, step: int) -> np.ndarray:
        key = (user, step)
        found = self._profiles.get(key)
        if found is None:
            rng = np.random.default_rng([self.spec.seed, user, step])
            found = rng.dirichlet(np.full(self.spec.n_categories, self.spec.concentration))
            if len(self._profiles) > 4 * self.spec.n_users + 1024:
                self._profiles.clear()  # bounded: profiles are cheap to redraw
            self._profiles[key] = found
        return found

    def taste(self, user: int, t_s: float) -> np.ndarray:
        """The user's category distribution at `t_s` seconds into the simulation."""
        if not 0 <= user < self.spec.n_users:
            raise IndexError(f"user {user} outside 0..{self.spec.n_users - 1}")
        phase = t_s / self.spec.drift_period_s + self._offsets[user]
        step = math.floor(phase)
        frac = phase - step
        return (1.0 - frac) * self._profile(user, step) + frac * self._profile(user, step + 1)

    def click_probability(self, user: int, item_categories: np.ndarray, t_s: float,
                          positions: np.ndarray | None = None) -> np.ndarray:
        """P(click) of each shown item; `item_categories` is (items, n_categories) multi-hot or weights."""
        cats = np.asarray(item_categories, dtype=np.float64)
        if cats.ndim != 2 or cats.shape[1] != self.spec.n_categories:
            raise ValueError(f"item_categories must be (items, {self.spec.n_categories}), got {cats.shape}")
        mass = cats.sum(axis=1, keepdims=True)
        dist = np.divide(cats, mass, out=np.full_like(cats, 1.0 / self.spec.n_categories), where=mass > 0)
        match = self.spec.n_categories * (dist @ self.taste(user, t_s))
        log_match = np.clip(np.log(np.maximum(match, 1e-12)), -_MAX_LOG_MATCH, _MAX_LOG_MATCH)
        p_click = 1.0 / (1.0 + np.exp(-(self._base_logit + self.spec.affinity * log_match)))
        pos = np.arange(len(cats)) if positions is None else np.asarray(positions, dtype=np.float64)
        return p_click / (1.0 + self.spec.position_decay * pos)

    def clicks(self, user: int, item_categories: np.ndarray, t_s: float, rng: np.random.Generator,
               positions: np.ndarray | None = None) -> np.ndarray:
        """One draw of which shown items the user clicks (bool per item)."""
        return rng.random(len(item_categories)) < self.click_probability(user, item_categories, t_s, positions)
