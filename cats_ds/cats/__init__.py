"""CATS (Curvature Aware Task Scaling): the pure-torch task-scaling algorithm."""

from cats_ds.cats.scaler import CATSConfig, TaskScaler, project_floored_simplex
from cats_ds.cats.surgery import GradientSurgery, mgda_scales, pcgrad_scales

__all__ = ["CATSConfig", "GradientSurgery", "TaskScaler", "mgda_scales", "pcgrad_scales", "project_floored_simplex"]
