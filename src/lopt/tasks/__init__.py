"""Inner problems: the Task protocol and families, and unrolled systems for the engine.

Tasks (``init``/``loss``/``batch``) become unrolled systems through :class:`InnerTraining`;
:mod:`lopt.tasks.systems` holds systems that are not network training (influence
balancing, the toy learning-rate schedule, Lorenz).
"""

from lopt.tasks.base import SPLITS, Task
from lopt.tasks.build import build_task
from lopt.tasks.char_lm import CharLM
from lopt.tasks.image_conv import ImageConv
from lopt.tasks.image_mlp import ImageMLP, ImageMLPFamily, device_data
from lopt.tasks.precision import PRECISIONS, cast_floating, check_precision
from lopt.tasks.quadratic import NoisyQuadratic
from lopt.tasks.systems import InfluenceBalancing, Lorenz, ToySchedule
from lopt.tasks.training import InnerTraining

__all__ = [
    "PRECISIONS",
    "SPLITS",
    "CharLM",
    "ImageConv",
    "ImageMLP",
    "ImageMLPFamily",
    "InfluenceBalancing",
    "InnerTraining",
    "Lorenz",
    "NoisyQuadratic",
    "Task",
    "ToySchedule",
    "build_task",
    "cast_floating",
    "check_precision",
    "device_data",
]
