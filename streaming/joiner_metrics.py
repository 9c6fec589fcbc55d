"""Prometheus metrics of the joiner (default registry; `serving.metrics.start_metrics_server` exposes them)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECORDS_IN = Counter("cascade_joiner_records_in_total", "Records read by the joiner (rate() = events/s in).", ["topic"])
SAMPLES_OUT = Counter("cascade_joiner_samples_out_total", "Labelled samples written, by label.", ["label"])
WINDOW_CLOSES = Counter("cascade_joiner_window_closes_total",
                        "Impressions closed as negatives, by cause (watermark, overflow: state full, drain: end of input).",
                        ["cause"])
ORPHANS = Counter("cascade_joiner_orphans_total",
                  "Early events whose impression never came within the window, dropped (kind: click, other).", ["kind"])
DUPLICATES = Counter("cascade_joiner_duplicates_total",
                     "Records that would have made a second sample (kind: impression, click, replayed after recovery).",
                     ["kind"])
LATE = Counter("cascade_joiner_late_total",
               "Records too late to count: click after its impression's window, impression after the dedup floor.",
               ["kind"])
IGNORED = Counter("cascade_joiner_ignored_total",
                  "Records not joined: no_request_id, invalid (undecodable / missing ids), after_close (non-positive event).",
                  ["reason"])
PENDING = Gauge("cascade_joiner_pending", "Joiner state size: open (impressions + early events), emitted (sample-id markers).",
                ["kind"])
LAG = Gauge("cascade_joiner_lag_records", "Records in the input partition not read yet.", ["topic", "partition"])
WATERMARK = Gauge("cascade_joiner_watermark_seconds", "Event-time watermark (Unix seconds).")
WATERMARK_DELAY = Gauge("cascade_joiner_watermark_delay_seconds", "Wall clock minus the watermark.")
MARKERS_FORGOTTEN = Counter("cascade_joiner_markers_forgotten_total",
                            "Emitted sample ids forgotten (cause: retention, evicted: max_emitted).", ["cause"])
CHECKPOINTS = Counter("cascade_joiner_checkpoints_total", "Checkpoints, by outcome (ok, compacted, redis_error).",
                      ["outcome"])
CHECKPOINT_SECONDS = Histogram("cascade_joiner_checkpoint_seconds", "Flush + checkpoint time.",
                               buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
RECOVERIES = Counter("cascade_joiner_recoveries_total", "Recoveries from the checkpoint (reason: start, write_error).",
                     ["reason"])
RECOVERED_SAMPLES = Counter("cascade_joiner_recovered_samples_total",
                            "Samples found in the output after the checkpoint at a recovery (not written again).")

# JoinCounts field -> (metric, label)
COUNT_METRICS = {
    "positives": (SAMPLES_OUT, "1"),
    "negatives": (SAMPLES_OUT, "0"),
    "closed_watermark": (WINDOW_CLOSES, "watermark"),
    "closed_overflow": (WINDOW_CLOSES, "overflow"),
    "closed_drain": (WINDOW_CLOSES, "drain"),
    "orphan_clicks": (ORPHANS, "click"),
    "orphan_events": (ORPHANS, "other"),
    "duplicate_impressions": (DUPLICATES, "impression"),
    "duplicate_clicks": (DUPLICATES, "click"),
    "replayed": (DUPLICATES, "replayed"),
    "late_clicks": (LATE, "click"),
    "expired_impressions": (LATE, "impression"),
    "no_request_id": (IGNORED, "no_request_id"),
    "invalid": (IGNORED, "invalid"),
    "events_after_close": (IGNORED, "after_close"),
    "forgotten": (MARKERS_FORGOTTEN, "retention"),
    "evicted_markers": (MARKERS_FORGOTTEN, "evicted"),
}

__all__ = ["CHECKPOINTS", "CHECKPOINT_SECONDS", "COUNT_METRICS", "DUPLICATES", "IGNORED", "LAG", "LATE",
           "MARKERS_FORGOTTEN", "ORPHANS", "PENDING", "RECORDS_IN", "RECOVERED_SAMPLES", "RECOVERIES", "SAMPLES_OUT",
           "WATERMARK", "WATERMARK_DELAY", "WINDOW_CLOSES"]
