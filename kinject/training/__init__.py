"""The training stage (conf groups `model`, `optim`, `trainer`): model, LightningModule, callbacks, strategies."""
