"""Deep-model training: the loop, checkpoints, validation and the launchers."""
