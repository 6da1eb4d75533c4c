"""Training and held-out evaluation of linterp's offline default models (`linterp train`, `linterp evaluate`).

`data`: photos and digits from installed packages; `tasks`: batches and losses; `recipes`: per-model
training choices; `loop`: the seeded, resumable training loop; `evaluate`: held-out quality.
"""
