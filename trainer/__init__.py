"""The trainer worker: validated, tuned, gated continual learning from user uploads."""
