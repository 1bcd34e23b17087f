"""The lab: test problems, trajectories, pictures, training comparisons and the report.

The lab uses the core (``descend``); the core never imports the lab.
"""
