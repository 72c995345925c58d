"""Lethe's own operations: LETHE_HOME and its lock, owner-only files, backups and
restore, and the retention of its activity logs."""
