"""What a run produced, read and shown: records → tables (metrics, stats, comparison) → rendering, plots and
the one results writer. Nothing here simulates or imports the run side."""
