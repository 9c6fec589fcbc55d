"""One typed configuration for every service, the CLI, benchmarks and tests.

Values come from, in increasing priority: the defaults below, the TOML file
(``config/cascade.toml`` or ``$CASCADE_CONFIG``), and environment variables
``CASCADE__SECTION__KEY=value`` (nested with double underscores). The well-known
``REDIS_URL`` and ``KAFKA_BOOTSTRAP_SERVERS`` select external servers instead of
the embedded ones. Nothing else in the code base should hold a port, a topic
name, a timeout or a size as a literal.
"""

from __future__ import annotations

import json
import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_FILE = REPO_ROOT / "config" / "cascade.toml"
ENV_PREFIX = "CASCADE__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RedisConfig(_Section):
    url: str | None = Field(None, description="External server (redis:// or rediss://); None starts an embedded valkey-server.")
    cluster: bool = Field(False, description="Treat `url` as a Redis Cluster seed node.")
    startup_timeout_s: float = 15.0
    socket_timeout_s: float = 5.0
    max_connections: int = 64


class TopicConfig(_Section):
    partitions: int = 4
    replication_factor: int = 1


class KafkaConfig(_Section):
    bootstrap_servers: str | None = Field(None, description="External cluster; None starts the embedded Tansu broker.")
    startup_timeout_s: float = 20.0
    client_id: str = "cascade"
    # Short group timeouts: Tansu (and small clusters) join groups slowly with the defaults.
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 1000
    max_poll_interval_ms: int = 30000
    request_timeout_ms: int = 15000
    topics: dict[str, TopicConfig] = Field(
        default_factory=lambda: {
            "impressions": TopicConfig(),
            "events": TopicConfig(),
            "samples": TopicConfig(),
            "features": TopicConfig(),
            "models": TopicConfig(partitions=1),
        }
    )


class GrpcConfig(_Section):
    host: str = "127.0.0.1"
    max_message_bytes: int = 16 * 1024 * 1024
    max_concurrent_rpcs: int = 1024
    shutdown_grace_s: float = 5.0
    default_deadline_s: float = 2.0
    max_request_items: int = Field(10_000, description="Upper bound on repeated fields (candidates, entities, events) in one request.")


class ServicePorts(_Section):
    """0 means "pick a free port" (tests, a second demo on the same machine)."""

    feed: int = 0
    recall: int = 0
    ranking: int = 0
    rerank: int = 0
    features: int = 0
    events: int = 0
    metrics: int = 0


class PathsConfig(_Section):
    var_dir: Path = Field(REPO_ROOT / "var", description="Logs, pid files and runtime state of the local stack.")
    data_dir: Path = Field(REPO_ROOT / "var" / "data", description="Offline store (Parquet) and loaded datasets.")
    artifacts_dir: Path = Field(REPO_ROOT / "var" / "artifacts", description="Model and index artifacts.")
    benchmarks_file: Path = REPO_ROOT / "BENCHMARKS.md"


class FeatureStoreConfig(_Section):
    project: str = Field("cascade", description="Namespace of online keys and registry entries.")
    definitions: Path = Field(REPO_ROOT / "config" / "features.py", description="Python file holding the project's feature definitions.")
    offline_subdir: str = Field("offline", description="Offline store root, under paths.data_dir.")
    registry_subdir: str = Field("registry", description="Applied definitions and their versions, under paths.var_dir.")
    materialize_chunk_rows: int = Field(50_000, description="Rows per bounded chunk when materializing (memory stays flat).")
    online_batch_keys: int = Field(2_000, description="Keys per MGET when reading many entities online.")
    online_lean_reads: bool = Field(True, description="Single-server online reads pack MGETs straight from entity ids and parse the replies off the pooled socket with hiredis (featurestore.online, 'Reads'); off: key strings packed by hiredis, replies through redis-py's connection API. Views of fixed-size rows are read in place off the receive buffer (featurestore.online.replies). Connection trouble always falls back to redis-py. Measured: 1.02-1.04x redis-py's path (bench online_features, same run).")
    online_pipeline_keys: int = Field(0, ge=0, description="Lean online reads split each view's MGET into MGETs of at most this many keys, each sent as soon as it is packed, so the server starts on the first while the client packs the rest (bench online_features: pipelined_speedup_mean). 0: off (one MGET per online_batch_keys keys, all packed, then sent). Slower under CPU contention (no idle core to overlap on).")
    online_cache_ttl_ms: float = Field(1000.0, ge=0.0, le=1000.0, description="Clients that opt in (ranking's) serve rows of views keyed by online_cache_entities from an in-process snapshot, refreshed ahead every online_cache_refresh_ms and never served more than this long after its Redis read began (featurestore.shared_cache): those features may be that stale. 0: off (every read goes to Redis).")
    online_cache_refresh_ms: float = Field(500.0, gt=0.0, description="How often the shared cache's background thread re-reads the entities requested since its last refresh (must be below online_cache_ttl_ms).")
    online_cache_entities: tuple[str, ...] = Field(("item",), description="Entities whose views the shared cache holds: ones every request shares (candidate items), not users.")
    online_cache_max_entries: int = Field(100_000, description="Most entities per cached read plan; beyond them rows are read from Redis every time.")
    stream_group: str = Field("featurestore-stream", description="Kafka consumer group of the streaming updater.")


class RecallConfig(_Section):
    """Candidate generation (recall/). Channel names: embedding, item2item, popular, fresh."""

    total_candidates: int = Field(1000, description="Candidates returned by default after the merge.")
    max_candidates: int = Field(5000, description="Upper bound a request may ask for.")
    channel_quotas: dict[str, int] = Field(
        default_factory=lambda: {"embedding": 500, "item2item": 300, "popular": 150, "fresh": 50},
        description="Default per-channel quotas (a request may override within max_candidates).",
    )
    channel_timeouts_ms: dict[str, float] = Field(
        default_factory=lambda: {"embedding": 6.0, "item2item": 6.0, "popular": 3.0, "fresh": 3.0},
        description="Per-channel time budget; a late channel is dropped and the response flagged degraded.",
    )
    index_kind: str = Field("auto", description="FAISS index: 'auto' (flat up to auto_flat_max_items, else ivfpq_fastscan), 'ivfpq_fastscan' (IVF-PQ with 4-bit FastScan codes + exact re-ranking; bench ann 1M items, nprobe 128, same run: recall@100 0.981 vs ivfpq's 0.963 at p50 1.20 vs 1.86 ms, recall@830 0.961 vs 0.916 at p50 1.36 vs 2.28 ms; see recall/index.py), 'ivfpq' (8-bit codes), 'hnsw' (behind IVF-PQ in bench ann) or 'flat' (exact).")
    ivf_refine_budget: int = Field(2000, description="IVF-PQ: exact re-scores per query at most (about): a large k (the embedding channel asks ~750-970: factor 3) shrinks the refine factor, never below 2; see recall/index.py.")
    auto_flat_max_items: int = Field(20_000, description="index_kind auto: exact search up to this many items.")
    metric: str = Field("ip", description="'ip' (inner product) or 'cosine'.")
    embedding_dim: int = 64
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128
    ivf_nlist: int = 4096
    ivf_nprobe: int = Field(128, description="IVF lists probed per query; bench ann at 1M items: nprobe 128 + refine 16 gave recall@100 0.963 at p99 1.5 ms.")
    pq_m: int = 16
    fastscan_pq_m: int = Field(64, description="ivfpq_fastscan: 4-bit sub-quantizers per vector (the largest divisor of the dimension up to this; 64 at 64-d: 32 code bytes per item); bench ann at 1M items, nprobe 128: 32 x 4 bits reached only recall@100 0.90 (0.92 by residual), 64 x 4 bits 0.98. The lists, nprobe and refinement are the ivf_* keys.")
    fastscan_bbs: int = Field(32, description="ivfpq_fastscan: codes per SIMD block (a multiple of 32; FAISS's default).")
    fastscan_by_residual: bool = Field(True, description="ivfpq_fastscan: encode residuals to the list centroid (FAISS 'x4fsr'; False: the raw vectors, 'x4fs'); bench ann at 1M items, 64 x 4 bits, nprobe 128: recall@100 0.981 vs 0.980, recall@830 0.961 vs 0.959, no slower (inner product: one lookup table for all lists).")
    # -- embedding channel and its index (recall/index.py, recall/artifacts.py, recall/channels/embedding.py)
    ivf_refine_factor: int = Field(16, description="IVF-PQ: candidates per result re-ranked with the exact vectors (0: no re-ranking); bench ann: 16 with nprobe 128 gives recall@100 0.96 on 1M items.")
    embedding_artifacts: str = Field("movielens", description="Artifact set the embedding channel serves, under artifacts_subdir (`cascade recall build --name`).")
    index_watch_s: float = Field(5.0, description="How often a live index checks its artifact set's CURRENT pointer for a new version.")
    index_keep_versions: int = Field(3, description="Artifact versions kept on disk by `cascade recall build` (CURRENT is never removed).")
    covisit_neighbors: int = Field(50, description="Top-K co-visited neighbours stored per item.")
    covisit_half_life_days: float = 7.0
    recent_items: int = Field(20, description="Recent user items used as item2item seeds and in the query vector.")
    fresh_max_age_hours: float = 48.0
    trending_half_life_hours: float = 6.0
    # -- co-visitation (recall/covisit.py, recall/channels/item2item.py)
    covisit_window_hours: float | None = Field(24.0 * 7, description="Longest time between two interactions of one user that still pair them (None: any).")
    covisit_max_gap: int = Field(10, description="Pair each interaction with at most this many following interactions of the same user.")
    covisit_max_history: int = Field(200, description="Most recent distinct items kept per user for pairing (bounds heavy users).")
    covisit_shrink: float = Field(0.0, description="Score c(i,j) / (sqrt(n_i n_j) + shrink): damps pairs of rare items.")
    covisit_user_weighting: bool = Field(True, description="Weight a user's pairs by 1/log2(1 + items of the user) (IUF).")
    covisit_memory_limit_mb: int = Field(2048, description="DuckDB memory limit of the offline build; beyond it DuckDB spills to disk.")
    item2item_seed_decay: float = Field(0.85, description="Weight of the p-th most recent seed item: decay**p.")
    version_refresh_s: float = Field(2.0, description="How often channels re-read the live co-visitation version pointer.")
    # -- popular / trending and fresh (recall/trending.py, recall/fresh.py)
    popular_event_weights: dict[str, float] = Field(
        default_factory=lambda: {"click": 1.0, "rating": 1.0, "like": 2.0, "comment": 2.0, "share": 3.0, "purchase": 4.0},
        description="Event types counted by the popular channel (decoded `type` names) and their weights; others are ignored.",
    )
    popular_max_items: int = Field(100_000, description="Items kept in the global trending sorted set.")
    popular_max_items_per_category: int = Field(10_000, description="Items kept per category's trending sorted set.")
    popular_category_boost: float = Field(2.0, description="Score x (1 + boost x preference) for items of the user's preferred categories.")
    fresh_category_boost: float = Field(2.0, description="Same boost for the fresh channel.")
    channel_cache_s: float = Field(1.0, description="The popular and fresh channels reuse the sorted-set heads they read for this long (0: read per request).")
    preferred_categories: int = Field(3, description="Categories read per user by the popular and fresh channels.")
    trending_stream_group: str = Field("recall-trending", description="Kafka consumer group of the trending updater.")
    # -- request -> RecallQuery (recall/service.py)
    recent_items_feature: str = Field("user_activity:item_id_last20_30d", description="Online list feature holding the user's recent items, most recent first.")
    category_features: tuple[str, ...] = Field((), description="User features naming preferred categories, e.g. 'syn_user_profile:home_category'.")
    user_features: tuple[str, ...] = Field((), description="Further user features read into RecallQuery.user_features (same one read).")
    # -- merge (recall/merge.py)
    channel_weights: dict[str, float] = Field(
        default_factory=lambda: {"embedding": 1.0, "item2item": 1.0, "popular": 1.0, "fresh": 1.0},
        description="Weighted reciprocal-rank fusion: merged score = sum over channels of weight / (rrf_k + rank + 1).",
    )
    rrf_k: float = Field(60.0, description="Reciprocal-rank fusion constant.")
    overfetch: float = Field(0.5, description="Each channel is asked for quota x (1 + overfetch) (plus room for filtered items) to backfill from.")
    artifacts_subdir: str = Field("recall", description="Index artifacts, under paths.artifacts_dir.")


class RankingConfig(_Section):
    """Scoring (ranking/): models, backends, dynamic batching, registry."""

    model: str = Field("deepfm", description="Default model kind to train/serve: 'deepfm' or 'din'.")
    feature_set: str = Field("deepfm_movielens", description="Feature set the default model reads.")
    backend: str = Field("onnxruntime", description="'eager', 'onnxruntime', 'aotinductor', 'tensorrt'.")
    hash_buckets: int = Field(100_003, description="Rows of each hashed id embedding table.")
    embedding_dim: int = 16
    mlp_hidden: tuple[int, ...] = (400, 400, 400)
    max_batch_size: int = Field(1024, description="Dynamic batcher: largest merged batch (rows); larger requests are split. "
                                "Measured (bench rank_service): the DeepFM's cost per row grows past ~1k rows on a 2-core "
                                "CPU (activations leave the cache), so bigger merged batches lost throughput.")
    preferred_batch_sizes: tuple[int, ...] = Field((256, 512, 1024), description="Batch sizes sent without waiting "
                                                   "(a batch reaching the smallest goes at once); also the warm-up shapes.")
    max_queue_delay_us: int = Field(2000, description="Longest a request waits for a fuller batch.")
    max_queue_size: int = Field(64, description="Requests waiting beyond this are refused with RESOURCE_EXHAUSTED.")
    deadline_ms: float = Field(15.0, description="Model budget per request; past it the fallback score is served.")
    threads: int = Field(2, description="Intra-op threads for CPU backends. 2 kept: two INT8 DeepFM servers on 1 and 2 threads, every 1,000-candidate Rank sent to both in turn (600 calls, other processes using 49% of the CPU): p50 14.6 vs 14.2 ms, p99 24.9 vs 19.7 ms.")
    int8: bool = Field(True, description="With backend 'onnxruntime', serve the artifact's INT8 copy (model.int8.onnx, `cascade rank train --int8` / `rank export --int8`) when it has one. DeepFM on MovieLens: test AUC 0.7478 -> 0.7476, logloss 0.5869 -> 0.5867, 2.2x samples/s (ranking.backends.serving_backend).")
    artifacts_subdir: str = Field("models", description="Model registry, under paths.artifacts_dir.")
    seed: int = 0
    # Encoding (ranking/encoding.py): sizes derived from the feature set, capped here.
    max_seq_len: int = Field(50, description="Longest behaviour sequence (LAST_N list of a join key) fed to DIN.")
    max_bag_len: int = Field(16, description="Longest multi-hot bag (e.g. genres); the training split's longest, capped here.")
    categorical_max_cardinality: int = Field(128, description="An INT64 profile/request feature with at most this many distinct training values is also a categorical field.")
    # Models and training (ranking/models, ranking/train.py).
    dropout: float = Field(0.2, description="Dropout of the deep MLP (and DIN's attention-free layers).")
    din_attention_hidden: tuple[int, ...] = Field((80, 40), description="DIN activation unit MLP over [b, c, b-c, b*c].")
    batch_size: int = Field(1024, description="Training minibatch rows.")
    learning_rate: float = Field(3e-4, description="Adam (dense) and SparseAdam (embeddings). 3e-4 beat 1e-3 for DeepFM on MovieLens (test AUC 0.7466±0.0009 over 3 seeds vs 0.7427), DIN was even.")
    embedding_l2: float = Field(1e-6, description="L2 penalty on the embedding rows a batch uses (per row, summed).")
    epochs: int = Field(20, description="Most training epochs; early stopping on validation AUC usually ends sooner.")
    patience: int = Field(2, description="Epochs without a better validation AUC before training stops.")
    train_threads: int = Field(1, description="Torch threads while training. 1: on this shared 2-core machine, with other jobs running, a DeepFM step (batch 1024) took 68-80 ms on 1 thread and 170-900 ms on 2 (OpenMP barriers wait for a descheduled thread).")
    rich_min_ratings: int = Field(20, description="Evaluation slice: users with at least this many ratings in the 30-day window at label time.")
    # Serving (ranking/service.py, ranking/live.py, ranking/registry.py, ranking/fallback.py).
    batching: bool = Field(True, description="Dynamic batching on; off scores each request alone (benchmark comparison).")
    adaptive_queue_delay: bool = Field(True, description="Skip max_queue_delay_us when no other request is on its way to the batcher.")
    fallback_reserve_ms: float = Field(2.0, description="Time kept back from the request deadline to answer with the fallback.")
    fallback_features: tuple[str, ...] = Field(
        ("item_popularity:rating_count_7d", "syn_item_popularity:click_count_7d"),
        description="Popularity features of the fallback scorer, first one defined wins (read with the model's set when it has it).",
    )
    fallback_model: str = Field("", description="Model name (e.g. an FTRL one) whose live version scores when the main model cannot; empty: none.")
    registry_poll_ms: int = Field(500, description="How often a ranking replica checks the registry for new versions, pins and splits.")
    max_loaded_versions: int = Field(3, description="Versions of a model kept loaded (live, previous, split, newest), warm for a swap.")


class RerankConfig(_Section):
    """Rule-based reranking (rerank/). The rule chain itself lives in `rules_file` (see rerank/rules_config.py)."""

    rules_file: Path = Field(REPO_ROOT / "config" / "rerank.toml", description="Declarative rule chain; rules run in file order.")
    key_prefix: str = Field("cascade:rerank", description="Namespace of impression history, block lists and item state in Redis.")
    max_count: int = Field(100, description="Largest page a request may ask for (rerank.proto: count in [1, 100]).")
    max_candidates: int = Field(2000, description="Organic candidates per request (rerank.proto: at most 2000).")
    max_injections: int = Field(50, description="Ads/boosts per request (rerank.proto: at most 50).")
    fetch_timeout_ms: float = Field(25.0, description="Budget of the one Redis round trip of the Redis-backed rules; past it they are skipped (fail open).")
    impressions_backend: str = Field("zset", pattern="^(zset|bloom)$", description="'zset' (exact, per-user sorted set) or 'bloom' (per-user-per-day Bloom filter).")
    impressions_retention_hours: float = Field(168.0, description="Impressions older than this are forgotten (trim + key TTL).")
    impressions_max_items: int = Field(2000, description="zset backend: newest impressions kept per user.")
    bloom_bits: int = Field(32768, description="bloom backend: bits per user per day (4 KiB).")
    bloom_hashes: int = Field(7, description="bloom backend: hash functions per item.")


class FeedConfig(_Section):
    """The GetFeed gateway (feed/): stage wiring, deadline slices, fallbacks, experiments."""

    stage_transport: str = Field("inprocess", pattern="^(inprocess|grpc)$", description="Call recall/ranking/rerank in this process or over gRPC (same code path).")
    recall_address: str = Field("", description="host:port of RecallService when stage_transport = 'grpc'.")
    ranking_address: str = Field("", description="host:port of RankingService when stage_transport = 'grpc'.")
    rerank_address: str = Field("", description="host:port of RerankService when stage_transport = 'grpc'.")
    deadline_ms: float = Field(100.0, description="Whole-request budget when the caller sets no deadline.")
    stage_budget: dict[str, float] = Field(
        default_factory=lambda: {"features": 0.10, "recall": 0.25, "ranking": 0.45, "rerank": 0.20},
        description="Share of the remaining request deadline each stage may use; a late stage is cut and its fallback served.",
    )
    candidates: int = Field(1000, description="Candidates asked from recall and scored by ranking.")
    rerank_candidates: int = Field(300, ge=1, le=2000, description="Top of the ranked list sent to rerank: enough to fill a page after its filters, "
                                   "a third of the work of all 1,000 (rerank's cost is linear in candidates).")
    max_count: int = Field(100, description="Largest page a request may ask for (feed.proto: count in [1, 100]).")
    experiment_name: str = Field("ranking_ab", description="Active experiment; empty: everyone in 'default'.")
    treatment_share: float = Field(0.5, ge=0.0, le=1.0, description="Share of users (stable hash of user id) in 'treatment'.")
    last_good_ttl_s: float = Field(86400.0, description="How long a user's last good feed is kept in Redis as a fallback.")
    key_prefix: str = Field("cascade:feed", description="Namespace of the gateway's Redis keys.")
    reserve_ms: float = Field(3.0, ge=0.0, description="Time kept back from the request deadline for the fallbacks and the response; the stages share the rest.")
    bucket_ranking: dict[str, str] = Field(
        default_factory=dict,
        description="Experiment bucket -> ranking target passed on in RankRequest: 'model', 'model@version' or '@version' "
                    "(e.g. {treatment = 'ftrl'}). Buckets not listed use ranking's own routing (live version / its traffic split).",
    )
    log_features: bool = Field(True, description="Ask ranking to log the served feature vectors (GetFeedResponse.served_feature_id).")
    item_attributes: dict[str, str] = Field(
        default_factory=lambda: {"category": "syn_item_profile:category", "author": "syn_item_profile:author",
                                 "group_id": "syn_item_profile:group_id", "published_at_ms": "syn_item_profile:published_at_ms"},
        description="Rerank candidate attribute (category, author, group_id, published_at_ms) -> item feature it is read from "
                    "(one online read for all candidates, the 'features' stage); a list value gives its first element.",
    )
    user_features: tuple[str, ...] = Field((), description="User features read in the same online read (shown by `cascade feed show`, kept in FeedResult).")
    item_attributes_cache_items: int = Field(200_000, ge=0, description="Item attributes kept in process (catalogue data hardly changes); 0: read every candidate every time.")
    item_attributes_ttl_s: float = Field(300.0, ge=0.0, description="How long a cached item attribute is trusted.")
    last_good_items: int = Field(100, ge=1, le=1000, description="Items kept as the user's last good feed: the served page, then the rest of the ranked list.")
    popular_fallback_items: int = Field(300, ge=1, le=5000, description="Items read from the popular (trending) set when recall fails and no last good feed is left.")
    popular_cache_s: float = Field(5.0, ge=0.0, description="How long the popular fallback reuses the list it read (a fallback should not wait on Redis).")
    fallback_seen_window_hours: float = Field(72.0, gt=0.0, description="Fallback feeds skip items shown to the user within this long (impression history).")
    fallback_timeout_ms: float = Field(25.0, gt=0.0, description="Budget of a fallback's Redis reads (capped by what is left of the deadline).")
    background_concurrency: int = Field(16, ge=1, description="After-response tasks (impression history, last good feed, impression log) running at once.")
    background_max_pending: int = Field(2048, ge=1, description="After-response tasks waiting or running; beyond it new ones are dropped and counted.")
    recall_embedding: str = Field("", description="In-process recall: also serve the embedding channel on this artifact set (`cascade recall build --name`); empty: none.")
    recall_items: str = Field("", description="In-process recall: catalogue Parquet with a category column for per-category popular/fresh (relative to the offline root, or absolute); empty: global sets only.")
    recall_category_column: str = Field("category", description="Category column of recall_items.")


class EventsConfig(_Section):
    """Impression logging and EventService (events/)."""

    impression_buffer: int = Field(100_000, description="Impressions held in memory awaiting Kafka; beyond it new ones are dropped and counted.")
    flush_timeout_s: float = Field(10.0, description="Longest a graceful shutdown waits for buffered impressions to reach Kafka.")
    max_future_skew_ms: int = Field(300_000, description="Events stamped further ahead of the server clock are INVALID_ARGUMENT.")
    max_batch_events: int = Field(500, description="Events per LogEvents call (events.proto: 1 to 500).")
    dedup_ttl_s: float = Field(86400.0, description="How long an accepted event_id is remembered to recognise retries.")
    key_prefix: str = Field("cascade:events", description="Namespace of the event service's Redis keys.")
    acks: str = Field("all", pattern="^(all|-1|0|1)$", description="Kafka acks of impressions and events: 'all' (every in-sync replica, idempotent producer), '1' (leader only) or '0'.")
    impression_linger_ms: int = Field(20, ge=0, description="Impression producer linger: records wait this long to share a Kafka request (throughput over latency; nobody waits on them).")
    impression_batch_bytes: int = Field(262_144, ge=1024, description="Impression producer batch size per partition, in bytes.")
    impression_max_block_ms: int = Field(1000, ge=1, description="Longest the logger's background thread waits for Kafka (bootstrap, metadata, producer memory) per attempt; keeps close() bounded when Kafka is down.")
    impression_retry_backoff_s: float = Field(1.0, gt=0, description="Wait between attempts to connect the impression producer while Kafka is unreachable.")
    overflow_log_interval_s: float = Field(10.0, ge=0, description="At most one warning per interval about impressions dropped (buffer full) or failed (Kafka error).")
    publish_timeout_s: float = Field(5.0, gt=0, description="LogEvents: longest Kafka may take to connect and ack a batch (bootstrap, metadata and delivery timeouts); then UNAVAILABLE.")
    publish_linger_ms: int = Field(2, ge=0, description="LogEvents producer linger: concurrent batches share a Kafka request.")
    dedup_pending_ttl_s: float = Field(30.0, gt=0, description="An event_id claimed by a publish that never finished (a crash) is released after this; keep it above 2 x publish_timeout_s.")
    dedup_timeout_s: float = Field(0.5, gt=0, description="Budget of each de-duplication round trip to Redis; past it (or on a Redis error) the batch is published without de-duplication.")


class StreamingConfig(_Section):
    """The learning loop (streaming/): joiner, online trainer, publishing."""

    attribution_window_s: float = Field(300.0, description="An impression with no click within this long becomes a negative sample.")
    positive_event_types: tuple[str, ...] = Field(("click",), description="Event types (decoded names) that make a sample positive.")
    joiner_group: str = Field("streaming-joiner", description="Kafka consumer group of the joiner.")
    joiner_max_pending: int = Field(1_000_000, description="Open impressions (and early clicks) held by the joiner; beyond it the oldest close early.")
    # Joiner (streaming/joiner.py, streaming/join_state.py, streaming/join_checkpoint.py).
    joiner_allowed_lateness_s: float = Field(10.0, ge=0.0, description="Watermark = oldest input partition's newest event time minus this: how late (event time) a click may be read and still join.")
    joiner_idle_advance_s: float = Field(10.0, gt=0.0, description="After every input partition has been consumed to its end for this long, the watermark advances with the wall clock (a quiet stream still closes windows).")
    joiner_dedup_retention_s: float = Field(600.0, ge=0.0, description="How long past its window (event time) an emitted sample id is remembered; an impression arriving later than that is dropped (counted), never emitted twice.")
    joiner_max_emitted: int = Field(2_000_000, ge=1, description="Emitted sample ids remembered at most; beyond it the oldest are forgotten early (counted).")
    joiner_checkpoint_interval_s: float = Field(1.0, gt=0.0, description="Flush the samples and checkpoint state + offsets to Redis this often (also on shutdown).")
    joiner_poll_max_records: int = Field(5000, ge=1, description="Most records handled per consumer poll.")
    joiner_linger_ms: int = Field(50, ge=0, description="Samples wait at most this long (plus one poll) to be sent in a fuller batch.")
    joiner_fetch_max_wait_ms: int = Field(100, ge=0, description="Longest the broker holds a fetch of the inputs open (Kafka's default 500 ms adds that much latency on Tansu).")
    joiner_fetch_partition_mb: float = Field(4.0, gt=0.0, description="Most data one fetch takes per input partition (Kafka's default 1 MB: the consumer fetches again only once its buffer is drained, and waits for it; fewer, larger fetches wait less).")
    joiner_key_prefix: str = Field("cascade:joiner", description="Namespace of the joiner's Redis checkpoint (one per joiner_group).")
    joiner_compact_min_mb: float = Field(64.0, gt=0.0, description="Checkpoint deltas are folded into a new snapshot once they exceed this and twice the snapshot.")
    joiner_feature_set: str = Field("", description="Feature set named in LabeledSample.features (version from the feature registry); empty: ranking.feature_set.")
    features_group: str = Field("streaming-features", description="Kafka consumer group of `cascade streaming features` (the feature store's updater over the events topic).")
    trainer_group: str = Field("streaming-trainer", description="Kafka consumer group of the FTRL trainer.")
    ftrl_alpha: float = 0.05
    ftrl_beta: float = 1.0
    ftrl_l1: float = 1.0
    ftrl_l2: float = 1.0
    hash_bits: int = Field(22, description="Weights of the hashed FTRL model: 2**hash_bits.")
    publish_every_s: float = Field(5.0, description="Publish a new model version at least this often while learning.")
    publish_every_samples: int = Field(50_000, description="...or after this many new samples, whichever comes first.")
    model_name: str = Field("ftrl", description="Registry name the trainer publishes under.")
    # FTRL trainer (streaming/trainer.py, streaming/hashing.py, streaming/publish.py).
    feature_set: str = Field("", description="Feature set the FTRL model reads (encoded like ranking does); empty: ranking.feature_set.")
    ftrl_crosses: tuple[str, ...] = Field(
        ("user_id*item_id", "user_id*item_profile:genres", "user_id*syn_item_profile:category"),
        description="Hashed crosses 'a*b' of encoder fields (a categorical, b categorical or bag); those the feature set lacks are skipped.",
    )
    trainer_batch_size: int = Field(2048, description="Most samples learned per minibatch (fewer when fewer are waiting).")
    trainer_poll_ms: int = Field(100, description="Longest a trainer poll of the samples topic waits for records.")
    checkpoint_every_s: float = Field(10.0, description="Trainer checkpoint period (z, n, offsets, dedup state), also on shutdown.")
    encoder_fit_rows: int = Field(2000, description="Without a live ranking encoder for the feature set: samples the trainer's encoder is fitted on.")
    encoder_fit_wait_s: float = Field(30.0, description="...or fit on what arrived within this long.")
    dedup_capacity: int = Field(1_000_000, description="Most recent learned sample ids remembered to drop duplicates.")
    served_cache_mb: int = Field(512, description="Served-feature records (raw) the trainer keeps to look samples' vectors up.")
    served_lookback_s: float = Field(900.0, description="The trainer starts reading served features this long before its first sample's impression.")
    served_wait_s: float = Field(1.0, description="Longest a batch waits for missing served-feature records before the online-store fallback.")
    metrics_window: int = Field(20_000, description="Progressive-validation window (samples) of the trainer's logloss and AUC.")
    keep_versions: int = Field(20, description="Published versions kept in the registry (live and rollback targets are never pruned).")
    publish_onnx: bool = Field(False, description="Also export model.onnx for each published version (slower publishing).")
    trainer_base_model: str = Field("", description="Stack the FTRL trainer on this ranking model's live version (e.g. 'deepfm'; same feature set): logit = base + w_b * base + FTRL terms, published as one servable graph. Empty: a plain FTRL model.")
    checkpoint_subdir: str = Field("streaming", description="Trainer and joiner checkpoints, under paths.var_dir.")


class Config(_Section):
    redis: RedisConfig = RedisConfig()
    kafka: KafkaConfig = KafkaConfig()
    grpc: GrpcConfig = GrpcConfig()
    ports: ServicePorts = ServicePorts()
    paths: PathsConfig = PathsConfig()
    features: FeatureStoreConfig = FeatureStoreConfig()
    recall: RecallConfig = RecallConfig()
    ranking: RankingConfig = RankingConfig()
    rerank: RerankConfig = RerankConfig()
    feed: FeedConfig = FeedConfig()
    events: EventsConfig = EventsConfig()
    streaming: StreamingConfig = StreamingConfig()

    @property
    def offline_root(self) -> Path:
        return self.paths.data_dir / self.features.offline_subdir

    @property
    def registry_dir(self) -> Path:
        return self.paths.var_dir / self.features.registry_subdir


def _set_path(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"config override {'.'.join(keys)} crosses a scalar at {key!r}")
    node[keys[-1]] = value


def _parse_env_value(raw: str) -> Any:
    """Env values are JSON when they parse as JSON (numbers, bools, objects), else strings."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if name.startswith(ENV_PREFIX):
            keys = [k.lower() for k in name[len(ENV_PREFIX):].split("__") if k]
            if keys:
                _set_path(tree, keys, _parse_env_value(raw))
    if environ.get("REDIS_URL"):
        _set_path(tree, ["redis", "url"], environ["REDIS_URL"])
    if environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        _set_path(tree, ["kafka", "bootstrap_servers"], environ["KAFKA_BOOTSTRAP_SERVERS"])
    return tree


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    """Build the configuration from file and environment; raises ValueError with the offending key."""
    env = dict(os.environ if environ is None else environ)
    file = Path(path or env.get("CASCADE_CONFIG") or DEFAULT_CONFIG_FILE)
    tree: dict[str, Any] = {}
    if file.exists():
        with file.open("rb") as fh:
            tree = tomllib.load(fh)
    elif path is not None or env.get("CASCADE_CONFIG"):
        raise FileNotFoundError(f"config file not found: {file}")
    tree = _merge(tree, _env_overrides(env))
    return Config.model_validate(tree)


@lru_cache(maxsize=1)
def get_config() -> Config:
    """The process-wide configuration, read once."""
    return load_config()
