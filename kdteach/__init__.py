"""kdteach: knowledge distillation and its failure modes, one module per idea.

Notebooks import it as `import kdteach as kd` and call kd.course.setup(), kd.distill.kd_loss(), kd.train.fit(), ...
"""
from kdteach import runtime, checks, data, models, distill, train, groups, probes, debias, exits, sets, plots, widgets, report, results, experiments, scorecard, course

__version__ = "0.1.0"
__all__ = ["runtime", "checks", "report", "results", "data", "models", "distill", "train", "groups", "probes", "debias", "exits", "sets", "plots", "widgets", "experiments", "scorecard", "course"]
