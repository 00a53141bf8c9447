"""Parses Keras files through the isolated parser in a process whose temp folder is its own:
``TMPDIR=D python temp_worker.py WORK`` (run by test_temp_folder.py). Prints each outcome.
Not a test module itself."""

import sys
import zipfile
from pathlib import Path
import keras
from morphscope.importers.isolation import parse_model_isolated, close_servers
from morphscope.errors import MorphScopeError
work = Path(sys.argv[1])
inputs = keras.Input((8, 8, 3))
outputs = keras.layers.Dense(2)(keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(inputs)))
model = keras.Model(inputs, outputs)
model.save(work / "ok.keras")
model.save(work / "ok.h5")
with zipfile.ZipFile(work / "many.keras", "w") as archive:  # 2,000 members and no weights
    for i in range(2000):
        archive.writestr(f"assets/f{i}", b"x" * 10)
    archive.writestr("config.json", "{}")
    archive.writestr("metadata.json", "{}")
for file in ("ok.keras", "ok.h5", "many.keras"):
    try:
        print(file, "parsed", parse_model_isolated(work / file, file).name)
    except MorphScopeError as err:
        print(file, "refused", err)
close_servers()
