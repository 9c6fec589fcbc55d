"""Recall channels, one module each; all implement recall.channel.Channel."""
