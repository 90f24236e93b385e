"""fmae_tui: the Textual app over the fmae engine (`fmae-tui`).

The app reads configs, registries and run folders through `fmae` and never imports torch: training runs
in subprocesses, so the app starts instantly and stays responsive.
"""
