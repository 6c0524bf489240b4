"""fedcond: federated and continual learning on distilled data."""
