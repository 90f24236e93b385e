"""`fmae predict` / `fmae export`: per-frame AUs and expressions for a user's own images and videos.

`sources` finds and decodes media, `detect` finds and crops faces, `tracking` keeps face ids across a
video's frames, `model_file` loads a finished run or an exported `.fmae` file, `table` writes the CSV
and its sidecar JSON, `runner` ties them together, `job` is the queue's form (a run folder with
`task = "predict"`), executed by `run_task`. Only `job` and `sources`' listing are torch-free.
"""
