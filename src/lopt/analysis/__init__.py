"""Analysis: figures, tables and statistics computed from result files only.

Nothing here imports training code: everything regenerates from pulled artifacts.
"""

from lopt.analysis.figures import plot_eval_curves, plot_meta_training
from lopt.analysis.tables import final_loss_table

__all__ = ["final_loss_table", "plot_eval_curves", "plot_meta_training"]
