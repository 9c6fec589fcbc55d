"""Training/serving skew: replay served feature vectors through the offline point-in-time join.

Every vector ranking served is in the served-feature log
(:mod:`featurestore.served_log`) with its entity keys and serving time. The
offline store computes, for the same keys *as of the same time*, what training
would have used (``OfflineStore.get_training_set``: labels = the served rows'
join keys + ``event_ts`` = the serving time, plus any request-context inputs of
request features). Comparing the two, feature by feature, is Chronon's
consistency check; a non-zero rate means training and serving disagree (a
materialization lag, a streaming bug, a source rewritten after the fact, a
request function that changed, ...).

Per feature and served row, one of:

* **match** -- equal values (floats within ``rel_tol``/``abs_tol``, lists
  element-wise, NaN equal to NaN), both null, or the server served a default
  (status NOT_FOUND / OUTSIDE_MAX_AGE / DEFAULTED) where the offline join has
  no value;
* **mismatch** -- both sides have a value and they differ;
* **missing** -- the server served a stored value, the offline join has none;
* **extra** -- the offline join has a value the server did not serve (it
  served null or a default that differs).

    cascade features skew --served PATH --feature-set NAME [--sample N]
    cascade features skew --from-kafka [BOOTSTRAP] --feature-set NAME [--sample N] [--since ISO-TIME]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from featurestore.definitions import ValueType
from featurestore.served_log import CONTEXT_COLUMN, STATUS_COLUMN

DEFAULT_SAMPLE = 10_000
_DEFAULTED_STATUSES = (3, 4, 5)  # FeatureStatus NOT_FOUND, OUTSIDE_MAX_AGE, DEFAULTED: the default was served
_NULL_STATUS = 2


@dataclass(frozen=True)
class FeatureSkew:
    """How one feature's served values compare with the offline join's."""

    ref: str
    dtype: str
    compared: int  # served rows compared (0 when the feature was not in the log)
    matched: int
    mismatched: int
    missing: int  # served a stored value, offline has none
    extra: int  # offline has a value the server did not serve
    logged: bool = True
    examples: tuple[dict[str, Any], ...] = ()

    def _rate(self, n: int) -> float:
        return n / self.compared if self.compared else 0.0

    @property
    def mismatch_rate(self) -> float:
        return self._rate(self.mismatched)

    @property
    def missing_rate(self) -> float:
        return self._rate(self.missing)

    @property
    def extra_rate(self) -> float:
        return self._rate(self.extra)

    @property
    def skew_rate(self) -> float:
        """Rows that are not a match, of those compared."""
        return self._rate(self.mismatched + self.missing + self.extra)


@dataclass(frozen=True)
class SkewReport:
    """Per-feature consistency of served vectors with the offline point-in-time join."""

    feature_set: str
    versions: tuple[int, ...]  # feature-set versions among the compared rows
    served_rows: int  # rows of this feature set in the log
    compared_rows: int  # rows sampled and replayed offline
    features: tuple[FeatureSkew, ...]
    rel_tol: float
    abs_tol: float
    notes: tuple[str, ...] = field(default=())

    def feature(self, ref: str) -> FeatureSkew:
        for f in self.features:
            if f.ref == ref:
                return f
        raise KeyError(f"no feature {ref!r} in this report")

    @property
    def skewed(self) -> tuple[FeatureSkew, ...]:
        """Features with any mismatch, missing or extra value."""
        return tuple(f for f in self.features if f.skew_rate > 0)

    @property
    def max_skew_rate(self) -> float:
        return max((f.skew_rate for f in self.features), default=0.0)

    def ok(self, max_rate: float = 0.0) -> bool:
        return self.max_skew_rate <= max_rate

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for f, d in zip(self.features, out["features"]):
            d.update(mismatch_rate=f.mismatch_rate, missing_rate=f.missing_rate, extra_rate=f.extra_rate)
        return out

    def format(self, examples: bool = True) -> str:
        """The report as a table (what `cascade features skew` prints)."""
        versions = ", ".join(map(str, self.versions)) or "unknown"
        lines = [
            f"Skew of feature set {self.feature_set!r} (version {versions}): {self.compared_rows} of {self.served_rows} "
            f"served rows replayed through the offline point-in-time join (float tolerance rel {self.rel_tol:g}, abs {self.abs_tol:g})",
        ]
        width = max([len("feature"), *(len(f.ref) for f in self.features)])
        lines.append(f"{'feature':<{width}}  {'type':<11}  {'rows':>7}  {'mismatch':>9}  {'missing':>9}  {'extra':>9}")
        for f in self.features:
            if not f.logged:
                lines.append(f"{f.ref:<{width}}  {f.dtype:<11}  {'-':>7}  {'not logged':>31}")
                continue
            lines.append(
                f"{f.ref:<{width}}  {f.dtype:<11}  {f.compared:>7}  {_pct(f.mismatch_rate):>9}  {_pct(f.missing_rate):>9}  {_pct(f.extra_rate):>9}"
            )
        skewed = self.skewed
        lines.append(f"{len(skewed)} of {len(self.features)} features skewed" + (
            f"; worst {max(skewed, key=lambda f: f.skew_rate).ref} at {_pct(self.max_skew_rate)}" if skewed else ""))
        if examples:
            for f in skewed:
                for ex in f.examples:
                    keys = ", ".join(f"{k}={v!r}" for k, v in ex["keys"].items())
                    lines.append(f"  {f.ref} {ex['kind']}: served {ex['served']!r} (status {ex['status']}) vs offline {ex['offline']!r}"
                                 f" [{keys} at {ex['event_ts']}, served_feature_id={ex['served_feature_id']} row {ex['row']}]")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _pct(rate: float) -> str:
    return f"{100 * rate:.2f}%"


# ----------------------------------------------------------------------------- comparison


def values_equal(a: Any, b: Any, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> bool:
    """Served vs offline equality: floats within tolerance (NaN == NaN), lists element-wise, the rest exactly."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (list, tuple, np.ndarray)) or isinstance(b, (list, tuple, np.ndarray)):
        if not isinstance(a, (list, tuple, np.ndarray)) or not isinstance(b, (list, tuple, np.ndarray)) or len(a) != len(b):
            return False
        return all(values_equal(x, y, rel_tol, abs_tol) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, float) or isinstance(b, float):
        try:
            fa, fb = float(a), float(b)
        except (TypeError, ValueError):
            return False
        if math.isnan(fa) or math.isnan(fb):
            return math.isnan(fa) and math.isnan(fb)
        return math.isclose(fa, fb, rel_tol=rel_tol, abs_tol=abs_tol)
    return a == b


def classify(served: pa.Array | pa.ChunkedArray, offline: pa.Array | pa.ChunkedArray, status: np.ndarray | None,
             dtype: ValueType | None, rel_tol: float = 1e-6, abs_tol: float = 1e-9) -> np.ndarray:
    """Per row: 0 match, 1 mismatch, 2 missing, 3 extra (see the module docstring). `status`: served statuses or None."""
    n = len(served)
    s_null = _nulls(served)
    o_null = _nulls(offline)
    if dtype in (ValueType.FLOAT64, ValueType.INT64, ValueType.BOOL) and _numeric(served) and _numeric(offline):
        if dtype is ValueType.FLOAT64 or pa.types.is_floating(_type(served)) or pa.types.is_floating(_type(offline)):
            s = _to_numpy(served, np.float64, np.nan)
            o = _to_numpy(offline, np.float64, np.nan)
            with np.errstate(invalid="ignore"):
                same = np.isclose(s, o, rtol=rel_tol, atol=abs_tol, equal_nan=True)
        else:
            same = _to_numpy(served, np.int64, 0) == _to_numpy(offline, np.int64, 0)
        equal = (~s_null & ~o_null & same) | (s_null & o_null)
    else:
        sv, ov = _pylist(served), _pylist(offline)
        equal = np.fromiter((values_equal(a, b, rel_tol, abs_tol) for a, b in zip(sv, ov)), dtype=bool, count=n)
    if status is not None:
        defaulted = np.isin(status, _DEFAULTED_STATUSES)
        served_absent = s_null | defaulted | (status == _NULL_STATUS)
    else:
        defaulted = np.zeros(n, dtype=bool)
        served_absent = s_null
    match = equal | (defaulted & o_null)
    out = np.zeros(n, dtype=np.int8)
    out[~match & ~served_absent & o_null] = 2
    out[~match & served_absent & ~o_null] = 3
    out[~match & ~served_absent & ~o_null] = 1
    return out


def _type(arr: pa.Array | pa.ChunkedArray) -> pa.DataType:
    return arr.type


def _numeric(arr: pa.Array | pa.ChunkedArray) -> bool:
    t = arr.type
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t)


def _nulls(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)


def _to_numpy(arr: pa.Array | pa.ChunkedArray, dtype: Any, fill: Any) -> np.ndarray:
    if pa.types.is_null(arr.type):
        return np.full(len(arr), fill, dtype=dtype)
    if pa.types.is_boolean(arr.type):
        arr = arr.cast(pa.int64())
    return np.asarray(pc.fill_null(arr, fill).to_numpy(zero_copy_only=False), dtype=dtype)


def _pylist(arr: pa.Array | pa.ChunkedArray) -> list[Any]:
    return arr.to_pylist()


# ----------------------------------------------------------------------------- the report


def skew_report(served: pa.Table, offline_store: Any, repo: Any, feature_set: str, sample: int | None = DEFAULT_SAMPLE, *,
                version: int | None = None, seed: int = 0, rel_tol: float = 1e-6, abs_tol: float = 1e-9,
                max_examples: int = 3) -> SkewReport:
    """Compare served vectors of `feature_set` (the tabular served log) with the offline point-in-time join.

    Takes up to `sample` rows of the set (optionally of one `version`) at
    random (`seed`), builds labels from their join keys, serving time
    (``event_ts``) and logged request-context inputs, and calls
    ``offline_store.get_training_set(labels, <FeatureSet>, repo.views)``, which
    returns the labels in order with one ``view__feature`` column per feature.
    """
    resolved = repo.resolve(feature_set)
    fs = repo.feature_set(feature_set)
    notes: list[str] = []
    if "feature_set" in served.column_names:
        served = served.filter(pc.fill_null(pc.equal(served.column("feature_set"), feature_set), False))
    if version is not None and "feature_set_version" in served.column_names:
        served = served.filter(pc.fill_null(pc.equal(served.column("feature_set_version"), version), False))
    total = served.num_rows
    if sample is not None and 0 < sample < total:
        idx = np.sort(np.random.default_rng(seed).choice(total, size=sample, replace=False))
        served = served.take(pa.array(idx))
    n = served.num_rows
    versions: tuple[int, ...] = ()
    if "feature_set_version" in served.column_names and n:
        versions = tuple(sorted(v for v in pc.unique(served.column("feature_set_version")).to_pylist() if v is not None))
        if len(versions) > 1:
            notes.append(f"the log holds several versions of {feature_set!r} ({', '.join(map(str, versions))}); "
                         "the offline join uses the current definitions (pass version= to compare one)")
    if not n:
        feats = tuple(FeatureSkew(f.ref, f.dtype.value, 0, 0, 0, 0, 0, logged=False) for f in resolved.features)
        return SkewReport(feature_set, versions, total, 0, feats, rel_tol, abs_tol,
                          (*notes, f"no served rows of feature set {feature_set!r} in the log"))
    labels = _labels(served, resolved)
    offline = offline_store.get_training_set(labels, fs, repo.views)
    if offline.num_rows != n:
        raise RuntimeError(f"the offline store returned {offline.num_rows} rows for {n} labels")
    status_col = served.column(STATUS_COLUMN) if STATUS_COLUMN in served.column_names else None
    status_fields = set()
    if status_col is not None:
        status_col = status_col.combine_chunks() if isinstance(status_col, pa.ChunkedArray) else status_col
        status_fields = {status_col.type.field(i).name for i in range(status_col.type.num_fields)}
    key_names = [k for k in resolved.join_keys if k in served.column_names]
    results = []
    for f in resolved.features:
        if f.column not in served.column_names:
            results.append(FeatureSkew(f.ref, f.dtype.value, 0, 0, 0, 0, 0, logged=False))
            continue
        st = None
        if status_col is not None and f.ref in status_fields:
            st = np.asarray(pc.fill_null(status_col.field(f.ref), 0).to_numpy(zero_copy_only=False), dtype=np.uint8)
            if not st.any():
                st = None
        served_col = served.column(f.column)
        offline_col = offline.column(f.column)
        kinds = classify(served_col, offline_col, st, f.dtype, rel_tol, abs_tol)
        counts = np.bincount(kinds, minlength=4)
        examples = []
        if max_examples:
            for i in np.flatnonzero(kinds)[:max_examples].tolist():
                examples.append({
                    "kind": ("match", "mismatch", "missing", "extra")[int(kinds[i])],
                    "served": served_col[i].as_py(),
                    "offline": offline_col[i].as_py(),
                    "status": int(st[i]) if st is not None else None,
                    "keys": {k: served.column(k)[i].as_py() for k in key_names},
                    "event_ts": served.column("event_ts")[i].as_py().isoformat(),
                    "served_feature_id": served.column("served_feature_id")[i].as_py() if "served_feature_id" in served.column_names else None,
                    "row": served.column("row")[i].as_py() if "row" in served.column_names else i,
                })
        results.append(FeatureSkew(f.ref, f.dtype.value, n, int(counts[0]), int(counts[1]), int(counts[2]), int(counts[3]),
                                   examples=tuple(examples)))
    return SkewReport(feature_set, versions, total, n, tuple(results), rel_tol, abs_tol, tuple(notes))


def _labels(served: pa.Table, resolved: Any) -> pa.Table:
    """Join keys + event_ts (the serving time) + the request-context inputs of the set's request features."""
    missing = [k for k in resolved.join_keys if k not in served.column_names]
    if missing:
        raise ValueError(f"the served log lacks join key column(s) {missing} of feature set {resolved.name!r}")
    if "event_ts" not in served.column_names:
        raise ValueError("the served log lacks the event_ts (serving time) column")
    ts = served.column("event_ts")
    if pa.types.is_timestamp(ts.type):
        ts = ts.cast(pa.timestamp("us", ts.type.tz or "UTC"))
    columns: dict[str, Any] = {k: served.column(k) for k in resolved.join_keys}
    columns["event_ts"] = ts
    inputs = [i for i in resolved.request_inputs if i != "event_ts" and i not in columns]
    if inputs:
        contexts = served.column(CONTEXT_COLUMN).to_pylist() if CONTEXT_COLUMN in served.column_names else [None] * served.num_rows
        parsed = [json.loads(c) if c else {} for c in contexts]
        for name in inputs:
            columns[name] = pa.array([ctx.get(name) for ctx in parsed])
    return pa.table(columns)


# ----------------------------------------------------------------------------- CLI


def cli_main(argv: Sequence[str] | None = None) -> int:
    """``cascade features skew``: print the skew report of a feature set's served vectors."""
    parser = argparse.ArgumentParser(prog="cascade features skew", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-kafka", nargs="?", const="", metavar="BOOTSTRAP",
                        help="read the served log from Kafka (default bootstrap: config kafka.bootstrap_servers)")
    source.add_argument("--served", type=Path, metavar="PATH", help="a served log in Parquet (file or directory)")
    parser.add_argument("--feature-set", required=True, metavar="NAME")
    parser.add_argument("--sample", type=int, default=DEFAULT_SAMPLE, help=f"rows to replay (default {DEFAULT_SAMPLE}; 0 = all)")
    parser.add_argument("--version", type=int, default=None, help="only rows served with this feature-set version")
    parser.add_argument("--topic", default=None, help="Kafka topic (default: features)")
    parser.add_argument("--since", default=None, help="Kafka: only records from this ISO-8601 time on")
    parser.add_argument("--save", type=Path, default=None, metavar="PATH", help="Kafka: also write the records read as Parquet")
    parser.add_argument("--definitions", type=Path, default=None, help="definitions file (default: config features.definitions)")
    parser.add_argument("--offline-root", type=Path, default=None, help="offline store root (default: config offline root)")
    parser.add_argument("--rel-tol", type=float, default=1e-6)
    parser.add_argument("--abs-tol", type=float, default=1e-9)
    parser.add_argument("--max-rate", type=float, default=None, help="exit 1 when any feature's skew rate exceeds this (e.g. 0.001)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0)

    from cascade.config import get_config
    from featurestore.offline import OfflineStore
    from featurestore.repository import DefinitionError, UnknownDefinition, get_repo, load_repo
    from featurestore.served_log import DEFAULT_TOPIC, read_served_log, read_served_log_kafka, served_log_to_parquet, served_table

    config = get_config()
    try:
        repo = load_repo(args.definitions) if args.definitions else get_repo()
        repo.resolve(args.feature_set)
        if args.served is not None:
            served = read_served_log(args.served)
        else:
            bootstrap = args.from_kafka or config.kafka.bootstrap_servers
            if not bootstrap:
                print("error: no Kafka to read from: pass --from-kafka HOST:PORT or set KAFKA_BOOTSTRAP_SERVERS", file=sys.stderr)
                return 2
            since = datetime.fromisoformat(args.since) if args.since else None
            records = read_served_log_kafka(bootstrap, config.kafka, args.topic or DEFAULT_TOPIC, since=since)
            served = served_table(records, repo)
            if args.save:
                served_log_to_parquet(served, args.save)
        with OfflineStore(args.offline_root or config.offline_root) as offline:
            report = skew_report(served, offline, repo, args.feature_set, args.sample or None, version=args.version,
                                 rel_tol=args.rel_tol, abs_tol=args.abs_tol)
    except (DefinitionError, UnknownDefinition, FileNotFoundError, LookupError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print(report.format())
    if args.max_rate is not None and not report.ok(args.max_rate):
        return 1
    return 0


__all__ = ["DEFAULT_SAMPLE", "FeatureSkew", "SkewReport", "classify", "cli_main", "skew_report", "values_equal"]
