"""Inner problems: the Task protocol, its families, and building tasks from config."""

from lopt.tasks.base import SPLITS, Task
from lopt.tasks.build import build_task
from lopt.tasks.image_mlp import ImageMLP, ImageMLPFamily, device_data
from lopt.tasks.quadratic import NoisyQuadratic

__all__ = ["SPLITS", "ImageMLP", "ImageMLPFamily", "NoisyQuadratic", "Task", "build_task", "device_data"]
