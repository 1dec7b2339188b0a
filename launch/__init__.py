"""Where jobs run (local processes, SLURM, Ray in SLURM) and the `trajtok` command line."""
