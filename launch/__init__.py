"""Launchers: TPU pod slices, SLURM, sweeps and the ahead-of-time TPU check (see README.md)."""
