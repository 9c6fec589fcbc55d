"""Ranking: DeepFM and DIN, exported and compiled, served with dynamic batching and hot swap.

Model side (training to artifact):

* :mod:`ranking.encoding` -- ``FeatureEncoder``: a feature set's schema -> model
  inputs (hashed ids, normalised numerics with missing indicators, bags,
  behaviour sequences), identical from an offline training set and from
  ``OnlineFeatures``;
* :mod:`ranking.models` -- DeepFM, DIN and the linear (FTRL) model, a dict of
  tensors in, logits out;
* :mod:`ranking.data`, :mod:`ranking.train`, :mod:`ranking.metrics` -- leak-free
  MovieLens training sets, training with early stopping, AUC / log loss;
* :mod:`ranking.export`, :mod:`ranking.backends` -- ONNX (dynamic batch),
  ONNX Runtime fp32/INT8, AOTInductor, TensorRT FP16;
* :mod:`ranking.artifact` -- the artifact directory and the ``Scorer``: the
  contract with the serving side;
* :mod:`ranking.cli` -- ``cascade rank train | export | evaluate``.

Serving side: :mod:`ranking.batcher`, :mod:`ranking.registry`,
:mod:`ranking.service`, :mod:`ranking.fallback`.
"""
