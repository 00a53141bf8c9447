"""The seed report page: any zoo model's totals and per-layer table; no server paths."""

from streamlit.testing.v1 import AppTest

from morphscope.explorer.views.common import plain

PAGE = "from morphscope.explorer.views.seed import seed_view\nseed_view()\n"


def test_seed_page_shows_torchvision_totals():
    import torchvision

    at = AppTest.from_string(PAGE, default_timeout=300).run()
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    assert metrics["MACs"] == f"{weights.meta['_ops']:.3g}G"  # 1.814 GFLOPS published -> "1.81G"
    assert metrics["Params"] == "11.7M"  # 11,689,512
    table = at.dataframe[0].value
    assert table["name"].iloc[0] == "conv1" and table["macs"].iloc[0] == 7 * 7 * 112 * 112 * 3 * 64


def test_seed_page_refuses_a_server_path():
    at = AppTest.from_string(PAGE, default_timeout=300).run()
    at.text_input(key="seed_model").set_value("/etc/passwd").run()
    assert not at.exception
    [error] = at.error
    assert plain("/etc/passwd: name a model as torchvision:NAME") in error.value  # shown escaped
