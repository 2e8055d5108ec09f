"""One run's life: from its checks and provenance to its last stderr line."""
