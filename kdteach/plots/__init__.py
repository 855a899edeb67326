"""The figures the notebooks show; each is a plain function returning a matplotlib Figure, called by a test."""
from kdteach.plots.soft_targets import *  # noqa: F401,F403
from kdteach.plots.groups import *  # noqa: F401,F403
from kdteach.plots.sets import *  # noqa: F401,F403
from kdteach.plots.debias import *  # noqa: F401,F403
