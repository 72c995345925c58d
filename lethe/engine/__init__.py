"""The relational engine: the warehouse, ingest, subject reach, tagging and enforcement plans,
the physical rewrite, the pseudonym vault and the audit ledger."""
