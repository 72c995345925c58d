"""Lethe: GDPR retention and anonymization for data pipelines (Dagster-free core)."""

__version__ = "0.1.0"
