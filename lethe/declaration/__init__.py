"""What is declared: the schema of the tables, the policy, its durations, strategies and
analysts' datasets, and their YAML documents."""
