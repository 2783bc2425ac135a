"""The law stage: P(F) fits per model, the F*(C) law across sizes, their report, and the table of runs they read."""
