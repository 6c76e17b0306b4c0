"""Running on many processes and clusters: launch (spawn, torchrun, SLURM), stop signals, the OUTPUT_DIR claim."""
