"""featurestore."""
