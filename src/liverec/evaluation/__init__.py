"""Offline evaluation: the leave-one-out protocol, metrics, baselines and reports."""
