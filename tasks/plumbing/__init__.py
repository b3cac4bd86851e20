"""What the stage tasks share: child processes, cache keys, MLflow tracking, the registry, lineage, typed results."""
