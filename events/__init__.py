"""Event logging: impressions the feed served and feedback the apps send, on their way to Kafka."""
