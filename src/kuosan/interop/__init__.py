"""Other libraries' checkpoints in and kuosan models out (diffusers)."""
