"""What a run reads: the model to load, and the calibration windows it is quantized on.

- :mod:`.model` — ``ModelConfig``: which model, loaded how;
- :mod:`.adapters` — GPT-2 Conv1D layers rewritten as ``nn.Linear``;
- :mod:`.calibration` — ``CalibrationConfig`` and the windows (strategies, hashing);
- :mod:`.sources` — the built-in calibration sources (files, strings, datasets, hub, none).
"""
