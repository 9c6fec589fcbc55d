"""The offline store: point-in-time training sets and window aggregations over Parquet, with DuckDB.

* `OfflineStore.get_training_set` - labels + features as of each label's time (`pit`, `windows`, `request`).
* `OfflineStore.latest_rows` / `OfflineStore.tiles` - what materialization writes online.
* `combine_tiles` - the arithmetic turning tiles into window values (the online read's).
"""

from featurestore.offline.pit import METHODS
from featurestore.offline.store import DEFAULT_NAME_FORMAT, FeatureRequest, OfflineStore, ResolvedSource
from featurestore.offline.windows import combine_tiles, tile_start

__all__ = ["DEFAULT_NAME_FORMAT", "METHODS", "FeatureRequest", "OfflineStore", "ResolvedSource", "combine_tiles", "tile_start"]
