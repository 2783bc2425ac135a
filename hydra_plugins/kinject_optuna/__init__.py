"""kinject's Hydra sweeper plugin: an Optuna search over infusion frequencies (`hydra/sweeper=optuna`)."""
