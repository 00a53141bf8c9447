"""Hugging Face vision models built from their default configs (random weights, no hub, on the
meta device): params and MACs exactly torch's own, and a ``.pt2`` file of each (exported on
the meta device, saved into tmp_path) counts exactly what the live import does.

Left out: DeiT and LeViT (``AutoModelForImageClassification.from_config`` cannot build their
default configs), Dinat (needs the natten library).
"""

import pytest
import torch
import transformers

from sweeps import flop_counter_macs, our_counts, pt2_counts, torch_params

HF_CONFIGS = [
    "ViTConfig", "BeitConfig", "Data2VecVisionConfig", "ViTMSNConfig", "IJepaConfig",
    "Dinov2Config", "Dinov2WithRegistersConfig", "SwinConfig", "Swinv2Config", "FocalNetConfig",
    "HieraConfig", "CvtConfig", "PvtConfig", "PvtV2Config", "SegformerConfig", "ConvNextConfig",
    "ConvNextV2Config", "ResNetConfig", "BitConfig", "RegNetConfig", "EfficientNetConfig",
    "MobileNetV1Config", "MobileNetV2Config", "MobileViTConfig", "MobileViTV2Config",
    "PoolFormerConfig", "SwiftFormerConfig", "TextNetConfig",
]


@pytest.mark.parametrize("config_name", HF_CONFIGS)
def test_hf_vision_model_counts_match_torch(config_name, tmp_path):
    config = getattr(transformers, config_name)()
    with torch.device("meta"):
        model = transformers.AutoModelForImageClassification.from_config(config).eval()
    size = getattr(config, "image_size", 224)  # convnets' configs carry no size
    side = size if isinstance(size, int) else size[0]
    shape = (getattr(config, "num_channels", 3), side, side)
    params, macs, graph = our_counts(model, shape, config_name)
    assert params == torch_params(model)
    example = torch.zeros(1, *shape, device="meta")
    assert macs == flop_counter_macs(model, example)
    assert pt2_counts(model, example, tmp_path / f"{config_name}.pt2") == (params, macs)
    # DINOv2's mask token is read only with bool_masked_pos: training-only, kept in the total
    assert set(graph.detached_params) <= {"dinov2.embeddings", "dinov2_with_registers.embeddings"}
