"""Progressive validation of the online learner, and the trainer's Prometheus metrics.

Every minibatch is predicted before it is learned from (:meth:`FTRLProximal.learn_many`
returns those predictions), so each prediction is an honest out-of-sample
one: the loss over them is the model's live loss, with no held-out set
(McMahan et al. 2013, section 5.1). :class:`ProgressiveValidation` keeps the
cumulative logloss and a window of the last ``window`` (prediction, label)
pairs for a windowed logloss and AUC, which are what the gauges show.
"""

from __future__ import annotations

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from streaming.ftrl import log_loss

SAMPLES = Counter("cascade_streaming_trainer_samples_total",
                  "Labeled samples the FTRL trainer consumed, by outcome (learned, duplicate, no_features, bad_record).",
                  ["outcome"])
FEATURE_SOURCE = Counter("cascade_streaming_trainer_feature_rows_total",
                         "Learned samples by where their features came from (served_log, online).", ["source"])
LOGLOSS = Gauge("cascade_streaming_trainer_logloss", "Progressive-validation logloss over the last window of samples.")
AUC = Gauge("cascade_streaming_trainer_auc", "Progressive-validation AUC over the last window of samples.")
LOGLOSS_TOTAL = Gauge("cascade_streaming_trainer_logloss_cumulative", "Progressive-validation logloss since the model started.")
NEWEST_CLICK = Gauge("cascade_streaming_trainer_newest_click_ms", "Click time (epoch ms) of the newest positive learned.")
PUBLISHED = Counter("cascade_streaming_trainer_published_total", "Model versions published, by outcome (ok, failed).",
                    ["outcome"])
PUBLISH_SECONDS = Histogram("cascade_streaming_trainer_publish_seconds", "Building and registering one model version.",
                            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10))
CHECKPOINT_SECONDS = Histogram("cascade_streaming_trainer_checkpoint_seconds", "Writing one trainer checkpoint.",
                               buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5))
BATCH_SECONDS = Histogram("cascade_streaming_trainer_batch_seconds", "One minibatch: features, encoding, learning.",
                          buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1))


def auc(p: np.ndarray, y: np.ndarray) -> float:
    """ROC AUC (ties get average ranks); NaN when only one class is present."""
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64) >= 0.5
    pos = int(y.sum())
    neg = y.size - pos
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(p, kind="mergesort")
    sp = p[order]
    ranks = np.empty(p.size, dtype=np.float64)
    # average ranks over runs of equal predictions
    starts = np.flatnonzero(np.r_[True, sp[1:] != sp[:-1]])
    ends = np.r_[starts[1:], sp.size]
    avg = (starts + ends + 1) / 2.0  # 1-based average rank of each run
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


class ProgressiveValidation:
    """Cumulative logloss and a windowed logloss / AUC of predictions made before learning."""

    def __init__(self, window: int) -> None:
        self.window = max(1, int(window))
        self.p = np.zeros(self.window)
        self.y = np.zeros(self.window)
        self.pos = 0
        self.size = 0
        self.loss_sum = 0.0
        self.count = 0

    def update(self, p: np.ndarray, y: np.ndarray) -> None:
        p = np.asarray(p, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        self.loss_sum += float(log_loss(p, y).sum())
        self.count += p.size
        p, y = p[-self.window:], y[-self.window:]
        k = p.size
        end = self.pos + k
        if end <= self.window:
            self.p[self.pos:end], self.y[self.pos:end] = p, y
        else:
            first = self.window - self.pos
            self.p[self.pos:], self.y[self.pos:] = p[:first], y[:first]
            self.p[: k - first], self.y[: k - first] = p[first:], y[first:]
        self.pos = end % self.window
        self.size = min(self.window, self.size + k)

    def logloss(self) -> float:
        if not self.size:
            return float("nan")
        return float(log_loss(self.p[: self.size], self.y[: self.size]).mean())

    def cumulative_logloss(self) -> float:
        return self.loss_sum / self.count if self.count else float("nan")

    def auc(self) -> float:
        return auc(self.p[: self.size], self.y[: self.size])

    def export(self) -> dict[str, float]:
        """Figures for the gauges and a published version's manifest."""
        out = {"logloss_window": self.logloss(), "auc_window": self.auc(), "logloss_progressive": self.cumulative_logloss()}
        LOGLOSS.set(out["logloss_window"])
        AUC.set(out["auc_window"])
        LOGLOSS_TOTAL.set(out["logloss_progressive"])
        return out


__all__ = ["AUC", "BATCH_SECONDS", "CHECKPOINT_SECONDS", "FEATURE_SOURCE", "LOGLOSS", "LOGLOSS_TOTAL", "NEWEST_CLICK",
           "PUBLISHED", "PUBLISH_SECONDS", "SAMPLES", "ProgressiveValidation", "auc"]
