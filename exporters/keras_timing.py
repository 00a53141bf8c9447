"""Measured latency for Keras models: the profile's swept ops and calibration networks built
as Keras layers, and a Keras forward pass timed (TensorFlow backend, as a ``tf.function`` in
inference mode: what serving runs). Imports keras and TensorFlow only, never torch (importing
torch after TensorFlow can crash the process, DESIGN section 11).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from typing import Any, Callable, Iterator

from morphscope.exporters.timing import FrameworkTiming, SweepOp, Timing, input_copies, time_over_inputs


def _hwc(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A C,H,W (or C) input shape as Keras' channels-last H,W,C (or C)."""
    return (*shape[1:], shape[0]) if len(shape) == 3 else tuple(shape)


def keras_op(op: SweepOp, shape: tuple[int, ...]) -> Any:
    """``op`` as a one-layer Keras model on an input of C,H,W ``shape``."""
    import keras
    from keras import layers

    inputs = keras.Input(_hwc(shape))
    if op.kind == "conv" and op.groups == op.cin == op.cout and op.groups > 1:
        layer = layers.DepthwiseConv2D(op.k, op.stride, padding="same", use_bias=op.bias)
    elif op.kind == "conv":
        layer = layers.Conv2D(op.cout, op.k, op.stride, padding="same", groups=op.groups, use_bias=op.bias)
    elif op.kind in ("add", "mul", "concat"):
        binary = {"add": layers.Add, "mul": layers.Multiply, "concat": layers.Concatenate}[op.kind]()
        return keras.Model(inputs, binary([inputs, inputs]))
    else:
        layer = {"bn": lambda: layers.BatchNormalization(),
                 "pool": lambda: layers.MaxPooling2D(op.k, op.stride, padding="same"),
                 "global_pool": lambda: layers.GlobalAveragePooling2D(keepdims=True),
                 "linear": lambda: layers.Dense(op.cout, use_bias=op.bias),
                 "act": lambda: layers.Activation({"relu": "relu", "relu6": "relu6", "silu": "silu",
                                                   "hardswish": "hard_swish", "sigmoid": "sigmoid"}[op.act])}[op.kind]()
    return keras.Model(inputs, layer(inputs))


def keras_network(name: str, side: int) -> Any:
    """The Keras build of a calibration network (see
    :func:`morphscope.exporters.timing.torch_network`: the same layers, channels last)."""
    import keras
    from keras import layers

    def conv(x, c, k=3, stride=1, groups=1, bias=False):
        if groups > 1:
            return layers.DepthwiseConv2D(k, stride, padding="same", use_bias=bias)(x)
        return layers.Conv2D(c, k, stride, padding="same", use_bias=bias)(x)

    def residual(x, c):
        y = layers.ReLU()(layers.BatchNormalization()(conv(x, c)))
        return layers.ReLU()(layers.Add()([x, layers.BatchNormalization()(conv(y, c))]))

    def inverted(x, c, k):
        e = 4 * c
        y = layers.Activation("silu")(layers.BatchNormalization()(conv(x, e, 1)))
        y = layers.Activation("silu")(layers.BatchNormalization()(conv(y, e, k, groups=e)))
        gate = layers.GlobalAveragePooling2D(keepdims=True)(y)
        gate = layers.Activation("sigmoid")(conv(layers.Activation("silu")(conv(gate, c // 2, 1, bias=True)),
                                                 e, 1, bias=True))
        return layers.Add()([x, layers.BatchNormalization()(conv(layers.Multiply()([y, gate]), c, 1))])

    inputs = keras.Input((side, side, 3))
    if name == "residual":
        x = conv(inputs, 48, stride=2, bias=True)
        for c, blocks in ((48, 2), (96, 2), (192, 1)):
            if c != 48:
                x = conv(x, c, stride=2, bias=True)
            for _ in range(blocks):
                x = residual(x, c)
    else:
        x = inputs
        for c, k in ((24, 3), (40, 5), (80, 3)):
            x = conv(x, c, stride=2, bias=True)
            for _ in range(2):
                x = inverted(x, c, k)
    return keras.Model(inputs, layers.GlobalAveragePooling2D(keepdims=True)(x), name=name)


def measure_keras(model: Any, input_shape: tuple[int, ...], batch: int = 1, runs: int = 20, warmup: int = 5,
                  device: str = "cpu", clock: Callable[[], float] = time.perf_counter, cold: bool = False) -> Timing:
    """Seconds per forward pass of a Keras model (a ``tf.function`` of ``model(x,
    training=False)``) on random inputs of ``(batch, *input_shape)`` given as C,H,W; ``cold``
    as for :func:`~morphscope.exporters.timing.measure_model`. Threads: TensorFlow's, fixed
    when it starts (:func:`keras_threads`)."""
    import numpy as np
    import tensorflow as tf

    shape = (batch, *_hwc(input_shape))
    rng = np.random.default_rng(0)
    inputs = [tf.constant(rng.standard_normal(shape, dtype=np.float32))
              for _ in range(input_copies(math.prod(shape), cold))]
    forward = tf.function(lambda x: model(x, training=False))
    timing = time_over_inputs(lambda x: forward(x).numpy(), inputs, runs, warmup, clock)  # .numpy(): wait for it
    return dataclasses.replace(timing, threads=tensorflow_threads())


def tensorflow_threads() -> int:
    """TensorFlow's intra-op threads (its default, 0, is one per core)."""
    import os

    import tensorflow as tf

    return tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count() or 1


def set_keras_threads(threads: int | None) -> int:
    """Set TensorFlow's intra-op threads to ``threads`` (possible only before TensorFlow has
    run anything in this process, so it stays set); the threads in force.

    Raises
    ------
    MorphScopeError
        When TensorFlow already runs with another thread count.
    """
    import tensorflow as tf

    from morphscope.errors import MorphScopeError

    if threads and threads != tensorflow_threads():
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            raise MorphScopeError(f"TensorFlow already runs with {tensorflow_threads()} threads in this "
                                  f"process; time Keras at {threads} threads in a new process") from None
    return tensorflow_threads()


@contextlib.contextmanager
def keras_threads(threads: int | None) -> Iterator[int]:
    """:func:`set_keras_threads` as the context :class:`FrameworkTiming` asks for (TensorFlow's
    threads are not restored: they cannot change once it runs)."""
    yield set_keras_threads(threads)


def keras_timing() -> FrameworkTiming:
    """Keras' part of a profile (TensorFlow backend)."""
    import keras

    from morphscope.importers.keras_importer import load_keras_model

    def versions() -> dict[str, str]:
        import tensorflow as tf

        return {"keras": f"{keras.__version__} (tensorflow {tf.__version__})"}

    return FrameworkTiming("keras", keras_op, keras_network, lambda model, shape, name: load_keras_model(model),
                           measure_keras, keras_threads, versions)
