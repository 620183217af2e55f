"""Training and evaluation of xrouter policies: rollouts through the serving episode loop, GRPO,
checkpoints, and `xrouter eval`."""
