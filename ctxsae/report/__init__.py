"""Figures and tables over one run (evaluation) or many (sweep reports)."""
