"""Ways to run a run folder somewhere else than in this process.

- local: the scheduler (`fmae.scheduler`) launches `fmae exec RUN` detached on a GPU/CPU slot of this
  machine (`fmae.gpus` plans the slots).
- slurm (`fmae.executors.slurm`): submits the same `execute(run)` to a Slurm cluster through submitit;
  submitit's local executor runs that very path on this machine (tests, machines without Slurm).

Nothing here is imported eagerly: this package must stay cheap to import (no torch, no submitit).
"""
