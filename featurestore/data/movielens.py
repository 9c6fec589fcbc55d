"""MovieLens-100K as the offline store's real sources.

The raw files come from the installed ``recbole`` wheel (``recbole/dataset_example/ml-100k``,
RecBole's atomic-file format: tab-separated, a typed header such as ``user_id:token``).
:func:`load_movielens` parses them and writes three Parquet files under
``<offline_root>/movielens/``:

``users.parquet``
    user_id int64, age int64, gender string, occupation string, zip_code string,
    event_ts timestamp[us, UTC]
``items.parquet``
    item_id int64, title string, release_year int64 (null when unknown: item 267, whose
    title is the file's placeholder "unkonwn"), genres list<string> (item 267: ["unknown"]),
    event_ts timestamp[us, UTC]. Item 1412's year sits in its title in RecBole's file
    ("... (1995)", year "V"); it is moved back to release_year.
``ratings.parquet``
    user_id int64, item_id int64, rating float64, event_ts timestamp[us, UTC],
    event_type string (always ``"rating"``); sorted by event_ts, user_id, item_id

Profiles carry no time in the data, so users and items get ``event_ts`` = the
earliest rating time minus one second: every profile row is valid as of every
rating (a point-in-time join never drops a label for want of a profile).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from featurestore.data._io import parquet_rows, write_table_atomic

SUBDIR = "movielens"
TS_TYPE = pa.timestamp("us", tz="UTC")

USERS_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("age", pa.int64()),
        ("gender", pa.string()),
        ("occupation", pa.string()),
        ("zip_code", pa.string()),
        ("event_ts", TS_TYPE),
    ]
)
ITEMS_SCHEMA = pa.schema(
    [
        ("item_id", pa.int64()),
        ("title", pa.string()),
        ("release_year", pa.int64()),
        ("genres", pa.list_(pa.string())),
        ("event_ts", TS_TYPE),
    ]
)
RATINGS_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("rating", pa.float64()),
        ("event_ts", TS_TYPE),
        ("event_type", pa.string()),
    ]
)


@dataclass(frozen=True)
class MovieLensPaths:
    """Where :func:`load_movielens` put the sources, and how many rows each holds."""

    root: Path  # <offline_root>/movielens
    users: Path
    items: Path
    ratings: Path
    n_users: int
    n_items: int
    n_ratings: int


def movielens_source_dir() -> Path:
    """The ml-100k directory inside the installed recbole package (the package is not imported)."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "MovieLens-100K is read from the `recbole` package, which is not installed; "
            "install it without its heavy dependencies: pip install --no-deps recbole",
            name="recbole",
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "dataset_example" / "ml-100k"
        if (candidate / "ml-100k.inter").is_file():
            return candidate
    raise FileNotFoundError(
        f"recbole is installed at {list(spec.submodule_search_locations)} but has no dataset_example/ml-100k/ml-100k.inter"
    )


def _read_atomic(path: Path, types: dict[str, pa.DataType]) -> pa.Table:
    """Read a RecBole atomic file; column names are the header's names without their ``:type``."""
    if not path.is_file():
        raise FileNotFoundError(f"MovieLens file missing: {path}")
    with path.open("r", encoding="utf-8") as fh:
        header = fh.readline().rstrip("\r\n").split("\t")
    names = [h.split(":", 1)[0] for h in header]
    missing = set(types) - set(names)
    if missing:
        raise ValueError(f"{path.name}: expected columns {sorted(missing)} in header {header}")
    return pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=1),
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False, double_quote=False),
        convert_options=pacsv.ConvertOptions(
            column_types=types,
            include_columns=list(types),
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )


def _timestamp_s(seconds: np.ndarray | int) -> pa.Array:
    us = np.asarray(seconds, dtype=np.int64) * 1_000_000
    return pa.array(np.atleast_1d(us), type=pa.int64()).cast(TS_TYPE)


def parse_ratings(source: Path) -> pa.Table:
    raw = _read_atomic(
        source / "ml-100k.inter",
        {"user_id": pa.int64(), "item_id": pa.int64(), "rating": pa.float64(), "timestamp": pa.float64()},
    )
    seconds = raw["timestamp"].to_numpy()
    if not np.all(seconds == np.floor(seconds)):
        raise ValueError("ml-100k.inter: timestamps must be whole unix seconds")
    table = pa.table(
        {
            "user_id": raw["user_id"],
            "item_id": raw["item_id"],
            "rating": raw["rating"],
            "event_ts": _timestamp_s(seconds.astype(np.int64)),
            "event_type": pa.repeat("rating", raw.num_rows).cast(pa.string()),
        },
        schema=RATINGS_SCHEMA,
    )
    return table.sort_by([("event_ts", "ascending"), ("user_id", "ascending"), ("item_id", "ascending")])


def parse_users(source: Path, profile_ts: pa.Scalar) -> pa.Table:
    raw = _read_atomic(
        source / "ml-100k.user",
        {"user_id": pa.int64(), "age": pa.int64(), "gender": pa.string(), "occupation": pa.string(), "zip_code": pa.string()},
    )
    columns = {name: raw[name] for name in ("user_id", "age", "gender", "occupation", "zip_code")}
    columns["event_ts"] = pa.repeat(profile_ts, raw.num_rows)
    return pa.table(columns, schema=USERS_SCHEMA).sort_by("user_id")


def parse_items(source: Path, profile_ts: pa.Scalar) -> pa.Table:
    raw = _read_atomic(
        source / "ml-100k.item",
        {"item_id": pa.int64(), "movie_title": pa.string(), "release_year": pa.string(), "class": pa.string()},
    )
    title = pc.utf8_trim_whitespace(raw["movie_title"])
    year_raw = pc.utf8_trim_whitespace(raw["release_year"])
    is_year = pc.match_substring_regex(year_raw, r"^[0-9]{4}$")
    # RecBole's conversion left one year inside its title ("... (1995)", year "V"): recover it.
    in_title = pc.and_(pc.invert(is_year), pc.match_substring_regex(title, r" \([0-9]{4}\)$"))
    title_year = pc.utf8_slice_codeunits(title, -5, -1)
    title = pc.if_else(in_title, pc.utf8_slice_codeunits(title, 0, -7), title)
    release_year = pc.if_else(is_year, year_raw, pc.if_else(in_title, title_year, pa.scalar(None, pa.string())))
    release_year = release_year.cast(pa.int64())
    # Genres are space-separated single tokens (Children's, Film-Noir, Sci-Fi); an empty field is [].
    genres = pa.array(
        [[g for g in (s or "").split() if g] for s in raw["class"].to_pylist()], type=pa.list_(pa.string())
    )
    table = pa.table(
        {
            "item_id": raw["item_id"],
            "title": title,
            "release_year": release_year,
            "genres": genres,
            "event_ts": pa.repeat(profile_ts, raw.num_rows),
        },
        schema=ITEMS_SCHEMA,
    )
    return table.sort_by("item_id")


def _default_root() -> Path:
    from cascade.config import get_config

    return get_config().offline_root


def shift_to(ratings: pa.Table, end_at: datetime) -> pa.Table:
    """The ratings moved in time so the newest one falls at `end_at` (gaps and order kept).

    MovieLens was rated in 1997-98; a live demo serving "now" would find every
    windowed feature (7-day popularity, 30-day activity) empty. Shifting the whole
    log keeps every relative time -- the temporal split, windows, recency -- intact.
    """
    last = pc.max(ratings["event_ts"]).cast(pa.int64()).as_py()
    offset = int(end_at.timestamp() * 1_000_000) - last
    shifted = pc.add(ratings["event_ts"].cast(pa.int64()), pa.scalar(offset, pa.int64())).cast(TS_TYPE)
    return ratings.set_column(ratings.schema.get_field_index("event_ts"), "event_ts", shifted)


def load_movielens(root: Path | None = None, force: bool = False, *, source: Path | None = None,
                   end_at: datetime | None = None) -> MovieLensPaths:
    """Write MovieLens-100K as Parquet under ``<root>/movielens/`` (root: the offline store's root).

    Idempotent: a file already present is left untouched unless `force`. Each
    file is written under a temporary name and renamed, so a crash never leaves
    a half-written source behind (a re-run finishes the missing ones).
    `source` overrides the ml-100k directory (default: inside the recbole package).
    `end_at` shifts every timestamp so the newest rating falls then (see :func:`shift_to`).
    """
    base = Path(root) if root is not None else _default_root()
    out = base / SUBDIR
    paths = {name: out / f"{name}.parquet" for name in ("users", "items", "ratings")}
    todo = [name for name, p in paths.items() if force or not p.is_file()]
    if todo:
        src = Path(source) if source is not None else movielens_source_dir()
        ratings = parse_ratings(src)
        if end_at is not None:
            ratings = shift_to(ratings, end_at)
        first = pc.min(ratings["event_ts"]).cast(pa.int64()).as_py()
        profile_ts = pa.scalar(first - 1_000_000, type=pa.int64()).cast(TS_TYPE)
        builders = {
            "users": lambda: parse_users(src, profile_ts),
            "items": lambda: parse_items(src, profile_ts),
            "ratings": lambda: ratings,
        }
        for name in todo:
            write_table_atomic(builders[name](), paths[name])
    return MovieLensPaths(
        root=out,
        users=paths["users"],
        items=paths["items"],
        ratings=paths["ratings"],
        n_users=parquet_rows(paths["users"]),
        n_items=parquet_rows(paths["items"]),
        n_ratings=parquet_rows(paths["ratings"]),
    )


def temporal_split(
    events: pa.Table,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    *,
    timestamp_field: str = "event_ts",
) -> tuple[pa.Table, ...]:
    """Split events by global time: every row of part k is strictly earlier than every row of part k+1.

    Cut points are the global time quantiles at the cumulative fractions; rows
    sharing the cut timestamp all go to the later part, so sizes match the
    fractions up to ties. Nothing a model is evaluated on precedes anything it
    was trained on, for any user. Pure: returns new tables (time-ordered,
    stable for equal times), the input is not modified. With the default
    fractions the result is ``(train, valid, test)``.
    """
    fr = np.asarray(list(fractions), dtype=np.float64)
    if fr.ndim != 1 or fr.size == 0 or np.any(fr < 0) or not np.isclose(fr.sum(), 1.0):
        raise ValueError(f"fractions must be non-negative and sum to 1, got {tuple(fractions)}")
    if timestamp_field not in events.column_names:
        raise KeyError(f"no column {timestamp_field!r} in {events.column_names}")
    col = events[timestamp_field]
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type) or pa.types.is_duration(col.type):
        col = col.cast(pa.int64())
    ts = col.to_numpy()
    n = ts.size
    order = np.argsort(ts, kind="stable")
    sorted_ts = ts[order]
    cuts = np.floor(np.cumsum(fr)[:-1] * n + 1e-9).astype(np.int64)
    # First row of each later part: the first row whose time is >= the quantile's time.
    starts = [0]
    for c in cuts:
        starts.append(n if c >= n else int(np.searchsorted(sorted_ts, sorted_ts[c], side="left")))
    starts.append(n)
    return tuple(events.take(pa.array(order[starts[k] : starts[k + 1]])) for k in range(fr.size))
