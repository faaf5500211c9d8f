"""CATS (Curvature Aware Task Scaling): the pure-torch task-scaling algorithm."""

from cats_ds.cats.scaler import CATSConfig, TaskScaler, project_floored_simplex

__all__ = ["CATSConfig", "TaskScaler", "project_floored_simplex"]
