"""MNIST digit classifier: a small VGG-style CNN (Keras 3, TensorFlow backend)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class MnistParams:
    epochs: int = 6
    batch_size: int = 128
    learning_rate: float = 1e-3
    validation_fraction: float = 0.1  # carved from the END of the training split
    augment: bool = False  # optional light shifts/rotations (off: not needed for the target)
    train_limit: int | None = None  # quick mode: use only the first N training images
    test_limit: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 (n,28,28) -> float32 (n,28,28,1) in [0,1]: the ONNX `image` input contract."""
    return (images.astype(np.float32) / 255.0)[..., np.newaxis]


def build_model(seed: int):
    import keras
    from keras import layers

    def conv(filters, padding="same"):
        # Conv -> BatchNorm -> ReLU: BatchNorm lets a few epochs suffice (CPU-only training).
        return [layers.Conv2D(filters, 3, padding=padding, use_bias=False), layers.BatchNormalization(),
                layers.Activation("relu")]

    # Pooling early keeps the cost ~6M multiply-adds per image (2 CPU cores).
    return keras.Sequential(
        [keras.Input((28, 28, 1), name="image"),
         *conv(32), layers.MaxPooling2D(),            # 14x14x32
         *conv(64), layers.MaxPooling2D(),            # 7x7x64
         *conv(128, padding="valid"),                 # 5x5x128
         layers.Flatten(), layers.Dropout(0.4, seed=seed),
         layers.Dense(128, activation="relu"), layers.Dropout(0.4, seed=seed),
         layers.Dense(10, activation="softmax", name="probabilities")],
        name="mnist_cnn",
    )


def _train_dataset(x, y, params: MnistParams, seed: int):
    """Shuffled (seeded, reshuffled each epoch) batches, optionally augmented."""
    import tensorflow as tf
    import keras
    from keras import layers

    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(params.batch_size)
    if params.augment:
        # Outside the model, so the exported graph contains no augmentation ops.
        augment = keras.Sequential([
            layers.RandomRotation(0.04, fill_mode="constant", seed=seed),
            layers.RandomTranslation(0.08, 0.08, fill_mode="constant", seed=seed + 1),
        ])
        ds = ds.map(lambda a, b: (augment(a, training=True), b), num_parallel_calls=1)
    return ds.prefetch(2)


def train(data, params: MnistParams, seed: int, verbose: int):
    """Trains on ``data`` = ((x_train, y_train), (x_test, y_test)) uint8 arrays.

    Returns (model, history dict, training seconds, epochs run). The test split is not touched.
    """
    import keras

    keras.utils.set_random_seed(seed)
    (x_fit, y_fit), (x_val, y_val) = fit_validation_split(data, params)

    model = build_model(seed)
    steps = params.epochs * int(np.ceil(len(x_fit) / params.batch_size))
    # Cosine decay lands the weights in a good minimum within a fixed epoch budget.
    schedule = keras.optimizers.schedules.CosineDecay(params.learning_rate, decay_steps=steps, alpha=0.02)
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    callbacks = [keras.callbacks.EarlyStopping("val_accuracy", patience=3, restore_best_weights=True)]
    start = time.perf_counter()
    history = model.fit(_train_dataset(x_fit, y_fit, params, seed), validation_data=(x_val, y_val),
                        epochs=params.epochs, callbacks=callbacks, verbose=verbose,
                        shuffle=False)  # the tf.data pipeline shuffles (seeded)
    seconds = time.perf_counter() - start
    return model, history.history, seconds, len(history.history["loss"])


def fit_validation_split(data, params: MnistParams):
    """((x_fit, y_fit), (x_val, y_val)), preprocessed: validation is the END of the
    training split, in its original order (also the drift reference's rows)."""
    (x_train, y_train), _ = data
    if params.train_limit:
        x_train, y_train = x_train[: params.train_limit], y_train[: params.train_limit]
    n_val = max(1, int(len(x_train) * params.validation_fraction))
    return ((preprocess(x_train[:-n_val]), y_train[:-n_val].astype(np.int32)),
            (preprocess(x_train[-n_val:]), y_train[-n_val:].astype(np.int32)))


def test_arrays(data, params: MnistParams):
    """(x_test float32 (n,28,28,1), y_test int32 (n,)) as fed to Keras and ONNX Runtime."""
    _, (x_test, y_test) = data
    if params.test_limit:
        x_test, y_test = x_test[: params.test_limit], y_test[: params.test_limit]
    return preprocess(x_test), y_test.astype(np.int32)
