"""Data subjects' rights: requests (access, portability, erasure, rectification, restriction,
objection), their answers and exports, subject lookup and litigation holds."""
