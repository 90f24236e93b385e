"""Learnable synthetic faces in the benchmarks' real formats."""

# The generator's version, recorded in each copy's synth.json: a copy written by an older one is made
# again on first use (a configured copy) or refused (one named by --root). 2: one image per label line
# (version 1 wrote DISFA frames `SN001/frame_N.jpg` with N restarting every synthetic task, so each
# image was listed four times with different labels); BP4D in the original's `2F01_T1/…` layout.
GENERATOR_VERSION = 2
