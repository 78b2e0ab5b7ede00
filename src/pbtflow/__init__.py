"""pbtflow: Population Based Training on Ray Tune, every trial an MLflow child run."""

from pbtflow.experiment import (AzureMLError, ClusterError, Experiment, ExperimentError, SettingError,
                                TrackingError, from_sources)


def tune(experiment: Experiment):
    """Run PBT for ``experiment`` and return Ray Tune's ``ResultGrid``."""
    from pbtflow.tuning import tune as _tune  # Ray is imported only when tuning

    return _tune(experiment)


__all__ = ["AzureMLError", "ClusterError", "Experiment", "ExperimentError", "SettingError",
           "TrackingError", "from_sources", "tune"]
