"""The local substrate: SQLite job state, an artifact folder, a daemon with warm workers."""
