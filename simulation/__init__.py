"""Simulated users for the demo and the closed-loop learning experiment.

Users with hidden, drifting tastes ask for feeds through GetFeed and click with
their true probabilities: the only way to see a recommender learn is to let it
act on people whose preferences are known to the experimenter, not to it.
"""
