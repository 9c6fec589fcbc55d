"""Datasets for the offline store: MovieLens-100K (real) and a synthetic feed of any size.

Both write Parquet sources under the offline store's root
(``get_config().offline_root``): ``movielens/{users,items,ratings}.parquet`` and
``synthetic_<tag>/{users,items,events}.parquet``. The command line is
:func:`featurestore.data.cli.main` (``cascade data ...``).
"""

from featurestore.data.movielens import (
    ITEMS_SCHEMA as MOVIELENS_ITEMS_SCHEMA,
    RATINGS_SCHEMA as MOVIELENS_RATINGS_SCHEMA,
    USERS_SCHEMA as MOVIELENS_USERS_SCHEMA,
    MovieLensPaths,
    load_movielens,
    movielens_source_dir,
    temporal_split,
)
from featurestore.data.synthetic import (
    EVENTS_SCHEMA as SYNTHETIC_EVENTS_SCHEMA,
    SyntheticPaths,
    SyntheticSpec,
    dataset_dir,
    generate,
    items_schema as synthetic_items_schema,
    users_schema as synthetic_users_schema,
)

__all__ = [
    "MOVIELENS_ITEMS_SCHEMA",
    "MOVIELENS_RATINGS_SCHEMA",
    "MOVIELENS_USERS_SCHEMA",
    "MovieLensPaths",
    "SYNTHETIC_EVENTS_SCHEMA",
    "SyntheticPaths",
    "SyntheticSpec",
    "dataset_dir",
    "generate",
    "load_movielens",
    "movielens_source_dir",
    "synthetic_items_schema",
    "synthetic_users_schema",
    "temporal_split",
]
