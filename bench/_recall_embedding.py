"""The embedding channel for `bench recall`, built through recall.artifacts / recall.channels.embedding.

One artifact per evaluation split, trained point-in-time on that split's
history only: the validation model on the first 80 % of the ratings
(``splits=(0.8, 0.2)``), the test model on the first 90 % (``(0.9, 0.1)``:
train + valid, ending where the test period starts). Written to a temporary
artifacts directory, loaded with `LiveIndex`, served by `EmbeddingChannel`
exactly as `cascade recall serve --embedding` would.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_FRACTIONS = {"valid": (0.8, 0.2), "test": (0.9, 0.1)}


def build_embedding_channels(config: Any, splits: Sequence[Any], quick: bool) -> dict[str, Any] | None:
    try:
        from recall.artifacts import LiveIndex, build_artifact
        from recall.channels.embedding import EmbeddingChannel
    except ImportError:
        return None
    from bench.recall import _step

    root = Path(tempfile.mkdtemp(prefix="bench-recall-emb-"))
    out: dict[str, Any] = {}
    for split in splits:
        fractions = _FRACTIONS[split.name]
        overrides: dict[str, Any] = {"splits": fractions}
        if quick:
            overrides["epochs"] = 3
        path = build_artifact("movielens", config=config, artifacts_dir=root / split.name, progress=False,
                              evaluate=False, keep=None, **overrides)
        live = LiveIndex(root / split.name)
        live.load()
        out[split.name] = EmbeddingChannel(live, faiss_threads=1)
        _step(f"embedding artifact for {split.name}: trained on the first {fractions[0]:.0%} of the ratings ({path.name})")
    return out
