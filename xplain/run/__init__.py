"""Stage 3, running the work: explain, evaluate, fit and bench, and the fitted state they share."""
