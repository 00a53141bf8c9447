"""Keras epoch time with and without the MorphNet FLOP regularizer, both compiled (graph
``fit``, no ``run_eagerly``): a residual conv net on 32x32 inputs, CPU.

Two models of the same architecture and weights, one with ``reg.attach``; epochs alternate
between them after one warm-up epoch each (the trace). Prints the median epoch times and the
ratio. Never imports torch.

    python bench/bench_keras_regularizer.py [--epochs 4] [--samples 1024] [--batch 64] [--jit]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from morphscope.importers.keras_importer import import_keras
from morphscope.regularizers.keras_regularizer import KerasFlopsRegularizer


def residual_net(keras):
    layers = keras.layers

    def unit(x, filters, stride=1):
        y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        y = layers.ReLU()(layers.BatchNormalization()(y))
        y = layers.BatchNormalization()(layers.Conv2D(filters, 3, padding="same", use_bias=False)(y))
        if stride != 1 or x.shape[-1] != filters:
            x = layers.BatchNormalization()(layers.Conv2D(filters, 1, strides=stride, use_bias=False)(x))
        return layers.ReLU()(layers.Add()([x, y]))

    inputs = keras.Input((32, 32, 3))
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(32, 3, padding="same", use_bias=False)(inputs)))
    for filters, stride in ((32, 1), (64, 2), (64, 1), (128, 2), (128, 1)):
        x = unit(x, filters, stride)
    outputs = layers.Dense(10)(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inputs, outputs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--jit", action="store_true", help="compile with jit_compile=True (XLA)")
    args = parser.parse_args()
    keras = import_keras()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.random((args.samples, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, args.samples)
    models = {}
    for name in ("plain", "regularized"):
        model = residual_net(keras)
        if models:
            model.set_weights(models["plain"].get_weights())
        model.compile(optimizer="adam", jit_compile=args.jit,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        if name == "regularized":
            KerasFlopsRegularizer(model).attach(model, strength=1e-9)
        model.fit(x, y, batch_size=args.batch, epochs=1, verbose=0)  # warm-up: the trace
        models[name] = model
    times = {name: [] for name in models}
    for _ in range(args.epochs):
        for name, model in models.items():
            begin = time.perf_counter()
            model.fit(x, y, batch_size=args.batch, epochs=1, verbose=0)
            times[name].append(time.perf_counter() - begin)
    p, r = (statistics.median(times[n]) for n in ("plain", "regularized"))
    print(f"Keras residual net, {args.samples} samples, batch {args.batch}, "
          f"jit_compile={args.jit}, median of {args.epochs} interleaved epochs")
    print(f"  plain {p:.2f} s/epoch, regularized {r:.2f} s/epoch: ratio {r / p:.3f}")


if __name__ == "__main__":
    main()
