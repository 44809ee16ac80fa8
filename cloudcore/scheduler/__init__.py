"""Cloud placement: pure filter/score/bind plugins (framework, filters) and the reconciler."""

from cloudcore.scheduler.framework import Decision, Filter, NodeInfo, Score, TaskInfo, place
from cloudcore.scheduler.reconciler import Scheduler

__all__ = ["Decision", "Filter", "NodeInfo", "Scheduler", "Score", "TaskInfo", "place"]
