"""Reference learners: the ground truth that every construction is checked against."""

from icgd.learners.gd import empirical_risk, gd_trajectory

__all__ = ["empirical_risk", "gd_trajectory"]
