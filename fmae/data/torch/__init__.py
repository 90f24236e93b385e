"""The torch side of `fmae.data`: datasets, samplers and batches (`datasets.py`), the train and eval
transforms (`transforms.py`), the pixel-cache datasets (`cached.py`) and their OpenCV augmentation
(`fast_augment.py`, its geometric ops in `fast_warps.py`). Everything else in `fmae.data` is torch-free, so `fmae data …` and `fmae synth`
start without it."""
