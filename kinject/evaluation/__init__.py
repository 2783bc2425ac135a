"""The evaluation stage (conf group `eval`): suites of multiple-choice items and their scoring."""
