"""Synthetic chest-CT cohort: the phantom image generator and the cohort writer."""
