"""Code every vmflow service shares: domain models, errors, settings, logging, messaging."""
