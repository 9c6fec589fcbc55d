"""Two-tower embeddings for the recall channel: training (torch) and the query encoder (numpy).

`train.train_embeddings` trains from the offline store; `query.QueryEncoder` turns
a user's online features into a query vector at request time (no torch needed).
"""
