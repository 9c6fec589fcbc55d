"""Real Redis- and Kafka-protocol servers for development, tests and the demo."""

from stack.stack import Stack

__all__ = ["Stack"]
