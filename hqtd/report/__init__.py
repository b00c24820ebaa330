"""Results layer: tables, figures and cross-revision comparison, built from the runs' eval files."""
