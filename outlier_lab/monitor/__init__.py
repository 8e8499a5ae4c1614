"""What watches a training run: the OutlierMonitor (probes, metrics, figures) and the
ConvergenceMonitor (how fast the validation loss falls), Lightning callbacks both."""

from outlier_lab.monitor.convergence_monitor import ConvergenceMonitor
from outlier_lab.monitor.outlier_monitor import OutlierMonitor

__all__ = ["ConvergenceMonitor", "OutlierMonitor"]
