"""One run, wired: config to experiment, loggers, the multirun failure report, the batch viewer."""
