"""Training pipeline: trains the served models and writes the Triton-layout model repository.

Run ``python -m training train-export --help``. Needs the ``train`` extra (TensorFlow).
"""
