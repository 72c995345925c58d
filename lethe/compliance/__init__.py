"""What compliance officers and analysts read: the record of processing, processors,
breaches, the re-consent list, anonymized datasets, summaries and checks."""
