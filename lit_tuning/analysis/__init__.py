"""A study's analysis: derived tables, importance, statistics over seeds, figures, the HTML report, confirm."""
