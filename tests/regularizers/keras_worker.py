"""The Keras regularizer in compiled ``fit``: plain graph, ``jit_compile=True`` and
``MirroredStrategy`` over 2 logical CPU devices; attached before ``compile`` and after an
earlier ``fit``. Run by ``test_keras_scale.py`` in a fresh interpreter (the logical devices
must be set before TensorFlow starts) as ``python keras_worker.py OUT_DIR``; writes
``OUT_DIR/result.json``, the weights saved after each fit and the model file. Never imports
torch. Not a test module itself.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for handbuilt

import handbuilt  # noqa: E402
from morphscope.importers.keras_importer import import_keras  # noqa: E402
from morphscope.regularizers.keras_regularizer import KerasFlopsRegularizer, keras_structure_logger  # noqa: E402

STRENGTH = 1e-6
N = 16


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(N, handbuilt.H, handbuilt.W, 3)).astype("float32"), np.arange(N) % 5


def fit_with_regularizer(keras, out: Path, name: str, strategy=None, jit_compile=False) -> dict:
    """Adam, 6 epochs, regularizer attached after compile; weights saved after fit."""
    scope = strategy.scope() if strategy else _null()
    with scope:
        keras.utils.set_random_seed(0)
        model = handbuilt.keras_residual_net()
        rng = np.random.default_rng(2)
        for layer in model.layers:  # trained-looking scales, some near the threshold
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.gamma.assign(rng.uniform(0.0, 0.3, layer.gamma.shape).astype("float32"))
        reg = KerasFlopsRegularizer(model)
        model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy",
                      jit_compile=jit_compile)
        reg.attach(model, STRENGTH)
    x, y = data()
    start_cost = reg.cost()
    history = model.fit(x, y, batch_size=8, epochs=6, verbose=0,
                        callbacks=[keras_structure_logger(reg, out / f"{name}_run", every=2)])
    model.save_weights(out / f"{name}.weights.h5")
    return {"losses": history.history["loss"], "start_cost": start_cost, "cost": reg.cost(),
            "run_eagerly": model.run_eagerly, "jit_compile": bool(model.jit_compile),
            "replicas": strategy.num_replicas_in_sync if strategy else 1}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def sgd_step_difference(keras, when: str) -> dict:
    """One full-batch SGD step with the regularizer attached (``before_compile`` or
    ``after_fit``) and one without, from the same weights: their gamma difference must be
    lr * strength * dG/dgamma at the starting weights."""
    import tensorflow as tf

    x, y = data()
    keras.utils.set_random_seed(1)
    model = handbuilt.keras_residual_net()
    plain = keras.models.clone_model(model)
    reg = KerasFlopsRegularizer(model)

    def compile_(m):
        m.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")

    if when == "before_compile":
        reg.attach(model, STRENGTH)
        compile_(model)
    else:
        compile_(model)
        model.fit(x, y, batch_size=N, epochs=1, verbose=0, shuffle=False)  # traces a train function
        reg.attach(model, STRENGTH)
    plain.set_weights(model.get_weights())
    compile_(plain)
    with tf.GradientTape() as tape:
        term = reg.loss()
    gammas = [model.get_layer(n).gamma for n in reg.plan.bn_names]
    expected = [0.1 * STRENGTH * g.numpy() for g in tape.gradient(term, gammas)]
    model.fit(x, y, batch_size=N, epochs=1, verbose=0, shuffle=False)
    plain.fit(x, y, batch_size=N, epochs=1, verbose=0, shuffle=False)
    seen = [(plain.get_layer(n).gamma.numpy() - model.get_layer(n).gamma.numpy()).tolist()
            for n in reg.plan.bn_names]
    return {"expected": [e.tolist() for e in expected], "seen": seen}


def main(out: Path) -> None:
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    keras = import_keras()
    result = {
        "compiled": fit_with_regularizer(keras, out, "compiled"),
        "jit": fit_with_regularizer(keras, out, "jit", jit_compile=True),
        "mirrored": fit_with_regularizer(keras, out, "mirrored", strategy=tf.distribute.MirroredStrategy(
            [d.name for d in tf.config.list_logical_devices("CPU")])),
        "before_compile": sgd_step_difference(keras, "before_compile"),
        "after_fit": sgd_step_difference(keras, "after_fit"),
    }
    handbuilt.keras_residual_net().save(out / "residual.keras")
    result["torch_imported"] = sorted(m for m in ("torch", "triton", "torchvision") if m in sys.modules)
    (out / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
