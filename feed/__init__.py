"""The feed gateway: ``FeedService.GetFeed`` over recall -> ranking -> rerank, degrading instead of failing.

* :mod:`feed.gateway` -- :class:`~feed.gateway.FeedGateway`, one request end to end (the spec is feed.proto);
* :mod:`feed.stages` -- the stage clients, in process or over gRPC (one code path);
* :mod:`feed.deadline`, :mod:`feed.experiments`, :mod:`feed.validation` -- pure pieces: deadline slices,
  experiment buckets, request validation;
* :mod:`feed.attributes`, :mod:`feed.fallback`, :mod:`feed.background` -- the item-attribute read, the last
  good feed and popular fallbacks, the bounded after-response tasks;
* :mod:`feed.service` -- the gRPC server and ``build_feed_server``; :mod:`feed.cli` -- ``cascade feed``;
* :mod:`feed.synthetic` -- a complete pipeline on a synthetic catalogue (tests, benchmarks, demos).
"""
