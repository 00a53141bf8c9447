"""Seed cost view: pick a zoo model, see its per-layer costs and totals."""

import streamlit as st

from morphscope.explorer import state
from morphscope.units import human_count
from morphscope.errors import MorphScopeError

ZOO_PREFIXES = ("torchvision:", "keras:", "example:")


@st.cache_data(max_entries=16, show_spinner=False)
def _seed_report(spec: str) -> dict:
    from morphscope.analyzers.report import seed_report
    from morphscope.importers.load import load_model

    return seed_report(load_model(spec))


def seed_view() -> None:
    st.title("MorphScope")
    spec = st.text_input("Model", value="torchvision:resnet18", key=state.SEED_MODEL,
                         help="torchvision:NAME, keras:NAME or example:digits (upload files on the "
                              "Explorer page)")
    try:
        if not spec.startswith(ZOO_PREFIXES):  # no server-side paths from a text box
            raise MorphScopeError(f"{spec}: name a model as torchvision:NAME, keras:NAME or example:NAME")
        with st.spinner(f"Importing {spec}..."):
            doc = _seed_report(spec)
    except MorphScopeError as err:
        st.error(str(err))
        return
    seed = doc["seed"]
    cols = st.columns(4)
    cols[0].metric("FLOPs", human_count(seed["flops"]))
    cols[1].metric("MACs", human_count(seed["macs"]))
    cols[2].metric("Params", human_count(seed["params"]))
    cols[3].metric("Size (kernel weights)", human_count(seed["size"]))
    st.dataframe(doc["layers"], width="stretch")
    st.caption(doc["convention"])
