"""Experiment buckets of the feed: a stable hash of the user id, and what each bucket asks of ranking.

A user is in ``treatment`` of experiment ``e`` iff
``murmur3_32(f"{e}:{user_id}") / 2**32 < feed.treatment_share`` -- the same
function :mod:`ranking.traffic` uses for its traffic splits, so a ranking split
named like the feed's experiment puts every user in the same bucket on both
sides. No experiment (``feed.experiment_name`` empty): everyone is in
``default``.

``feed.bucket_ranking`` maps a bucket to a ranking target passed on in the
RankRequest: ``"model"`` (RankRequest.model_name), ``"model@version"`` or
``"@version"`` (RankRequest.model_version too). The request's
ExperimentOverrides win: ``bucket`` forces the bucket (while an experiment is
active), ``ranking_model_version`` the version; any override set marks the
assignment ``overridden``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ranking.traffic import CONTROL, DEFAULT, TREATMENT, bucket_point

BUCKETS = (CONTROL, TREATMENT)


@dataclass(frozen=True)
class RankingTarget:
    """What ranking is asked to score with; None fields leave the choice to ranking."""

    model_name: str | None = None
    model_version: str | None = None

    @classmethod
    def parse(cls, spec: str) -> RankingTarget:
        """``"model"``, ``"model@version"`` or ``"@version"``; raises ValueError on an empty part."""
        name, at, version = spec.partition("@")
        if (at and not version) or not (name or version):
            raise ValueError(f"ranking target {spec!r}: expected 'model', 'model@version' or '@version'")
        return cls(name or None, version or None)


@dataclass(frozen=True)
class Assignment:
    """The feed's ExperimentAssignment plus the ranking target of the bucket."""

    experiment: str
    bucket: str
    overridden: bool
    ranking: RankingTarget


def assign_bucket(experiment: str, user_id: str, treatment_share: float) -> str:
    """``"treatment"`` or ``"control"`` by the stable hash; ``"default"`` when `experiment` is empty."""
    if not experiment:
        return DEFAULT
    if treatment_share <= 0.0:
        return CONTROL
    if treatment_share >= 1.0:
        return TREATMENT
    return TREATMENT if bucket_point(experiment, user_id) < treatment_share else CONTROL


class Experiments:
    """Bucket assignment for one configuration (``FeedConfig``)."""

    def __init__(self, experiment: str, treatment_share: float, bucket_ranking: dict[str, str] | None = None) -> None:
        self.experiment = experiment
        self.treatment_share = float(treatment_share)
        self.targets = {b: RankingTarget.parse(s) for b, s in (bucket_ranking or {}).items()}

    @classmethod
    def from_config(cls, feed: object) -> Experiments:
        return cls(feed.experiment_name, feed.treatment_share, dict(feed.bucket_ranking))  # type: ignore[attr-defined]

    def assign(self, user_id: str, *, bucket: str | None = None, model_version: str | None = None,
               overridden: bool = False) -> Assignment:
        """The assignment of `user_id`; `bucket` / `model_version` are request overrides (already validated)."""
        chosen = assign_bucket(self.experiment, user_id, self.treatment_share)
        if bucket is not None and self.experiment:
            chosen = bucket
        target = self.targets.get(chosen, RankingTarget())
        if model_version is not None:
            target = RankingTarget(target.model_name, model_version)
        return Assignment(self.experiment, chosen, overridden, target)


__all__ = ["Assignment", "BUCKETS", "Experiments", "RankingTarget", "assign_bucket"]
