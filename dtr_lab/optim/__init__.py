"""What the optimizer steps carry besides the gradients: the learning-rate schedule and the EMA."""
