"""Session-state keys, declared once."""

MODEL_SOURCE = "model_source"  # "Bundled example" | "Upload a file" | "Zoo model"
ZOO_SPEC = "zoo_spec"  # torchvision:NAME or keras:NAME
ZOO_SIDE = "zoo_side"  # input image side for zoo models
MODEL_UPLOAD = "model_upload"
CHECKPOINT_UPLOADS = "checkpoint_uploads"
LABEL_PREFIX = "label_"  # + checkpoint file name: the user's label for it
THRESHOLD = "threshold"
HARDWARE = "hardware"
FACTOR = "factor"  # the what-if width multiplier
ROUND_TO = "round_to"  # widths rounded up to multiples of this (hardware alignment)
EXPAND_TARGET = "expand_target"  # which structure the match buttons solve for
LAST_GOOD_MODEL = "last_good_model"  # (kind, key) of the last model that loaded
MODEL_FILE = "model_file"  # (what it was built from, name, bytes, note) of the last rebuilt model
HIST_LAYER = "hist_layer"
SEED_MODEL = "seed_model"  # the seed report page's model name
SEED_OWN_SIZE = "seed_own_size"  # seed report: the model's own input size (else SEED_SIDE)
SEED_SIDE = "seed_side"  # seed report: input image side
EXAMPLE_RUNS = "example_runs"  # checkbox: show the bundled example's training runs
RUN_UPLOADS = "run_uploads"  # uploaded run files (.zip, alive_<step>, cost.jsonl)
RUN_STEP_PREFIX = "run_step_"  # + run name: the selected step of that run
SWEEP_METRIC = "sweep_metric"  # the logged metric the runs' scatter plots
MATCHED_TARGET = "matched_target"  # the resource the last Match button solved for (the star)
TABLE_SORT = "layer_table"  # the on-screen per-layer table
CONVENTION = "convention"  # counting convention: physical | morph-net
PRUNE_OUTPUTS = "prune_outputs"  # model outputs that may be pruned: none | feature-maps | all
OUTPUT_BOUNDARY = "output_boundary"  # analyse up to this op (e.g. a detector's backbone end)
