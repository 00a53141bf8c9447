"""torchvision's detection, segmentation and video models: params and MACs exactly torch's.

Segmentation and video models run on the meta device (no weights allocated, no arithmetic).
Detectors branch on data (proposals, NMS), so they run for real on a zero image, small enough
to be quick (128 px, few proposals); the capture keeps their layer names. Optical flow (RAFT)
takes two images and is left out: ``load_module`` captures one-input models
(``test_every_task_model_is_swept_or_named`` keeps the list honest).

Segmentation and video models are also exported on the meta device and saved into tmp_path:
the ``.pt2`` file counts exactly what the live import does. torch.export cannot export the
detectors (the number of boxes after top-k and NMS is data-dependent): each test asserts it
still fails, so the exclusion cannot outlive its cause.
"""

import pytest
import torch
import torchvision

from sweeps import flop_counter_macs, our_counts, pt2_counts, torch_params

models = torchvision.models
_RCNN = {"min_size": 128, "max_size": 128, "rpn_pre_nms_top_n_test": 100,
         "rpn_post_nms_top_n_test": 50, "box_detections_per_img": 10}
_ONE_STAGE = {"min_size": 128, "max_size": 128, "detections_per_img": 10, "topk_candidates": 50}
DETECTION = {name: _ONE_STAGE if name.startswith(("retinanet", "fcos")) else
             {} if name.startswith("ssd") else _RCNN
             for name in models.list_models(module=models.detection)}
SEGMENTATION = models.list_models(module=models.segmentation)
VIDEO = {name: (3, 16, 224, 224) if name.startswith(("mvit", "s3d")) else (3, 8, 64, 64)
         for name in models.list_models(module=models.video)}
NOT_SWEPT = {"raft_large": "two input images", "raft_small": "two input images"}


def test_every_task_model_is_swept_or_named():
    swept = set(DETECTION) | set(SEGMENTATION) | set(VIDEO)
    listed = {name for module in (models.detection, models.segmentation, models.video,
                                  models.optical_flow) for name in models.list_models(module=module)}
    assert listed - swept == set(NOT_SWEPT)
    assert len(DETECTION) >= 10 and len(SEGMENTATION) >= 6 and len(VIDEO) >= 9


@pytest.mark.parametrize("name", sorted(DETECTION))
def test_detection_model_counts_match_torch_and_keep_layer_names(name):
    model = models.get_model(name, weights=None, weights_backbone=None, **DETECTION[name]).eval()
    side = 320 if name.startswith("ssdlite") else 300 if name.startswith("ssd") else 128
    params, macs, graph = our_counts(model, (3, side, side), name)
    assert params == torch_params(model)
    assert macs == flop_counter_macs(model, torch.zeros(1, 3, side, side))
    convs = [n for n, a in graph.ops() if a["kind"] == "conv"]
    assert convs and all(not n.startswith("convolution") for n in convs)  # module paths
    with pytest.raises(Exception, match="data-dependent expression"):
        torch.export.export(model, (torch.zeros(1, 3, side, side),))


@pytest.mark.parametrize("name", sorted(SEGMENTATION))
def test_segmentation_model_counts_match_torch(name, tmp_path):
    with torch.device("meta"):
        model = models.get_model(name, weights=None, weights_backbone=None).eval()
    params, macs, _ = our_counts(model, (3, 128, 128), name)
    example = torch.zeros(1, 3, 128, 128, device="meta")
    assert params == torch_params(model)
    assert macs == flop_counter_macs(model, example)
    assert pt2_counts(model, example, tmp_path / f"{name}.pt2") == (params, macs)


@pytest.mark.parametrize("name", sorted(VIDEO))
def test_video_model_counts_match_torch(name, tmp_path):
    with torch.device("meta"):
        model = models.get_model(name, weights=None).eval()
    shape = VIDEO[name]
    params, macs, _ = our_counts(model, shape, name)
    example = torch.zeros(1, *shape, device="meta")
    assert params == torch_params(model)
    assert macs == flop_counter_macs(model, example)
    assert pt2_counts(model, example, tmp_path / f"{name}.pt2") == (params, macs)
