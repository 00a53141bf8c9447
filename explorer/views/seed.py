"""Seed cost view: pick a zoo model, see its per-layer costs and totals."""

import streamlit as st

from morphscope.explorer import state
from morphscope.explorer.views.common import plain
from morphscope.units import human_count
from morphscope.errors import MorphScopeError

ZOO_PREFIXES = ("torchvision:", "keras:", "example:")


@st.cache_data(max_entries=16, show_spinner=False)
def _seed_report(spec: str, side: int | None) -> dict:
    from morphscope.analyzers.report import seed_report
    from morphscope.importers.load import load_model

    return seed_report(load_model(spec, (3, side, side) if side else None))


def _shown(value):
    """A table cell as a person reads it: tuples as 3x3, nothing as a blank."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "x".join(map(str, value))
    return value


def seed_view() -> None:
    st.title("MorphScope")
    spec = st.text_input("Model", value="torchvision:resnet18", key=state.SEED_MODEL,
                         help="torchvision:NAME, keras:NAME or example:digits (upload files on the "
                              "Explorer page)")
    own_size = st.checkbox("The model's own input size", value=True, key=state.SEED_OWN_SIZE)
    side = None if own_size else int(st.number_input("Input size (pixels)", 32, 1024, 224, key=state.SEED_SIDE))
    try:
        if not spec.startswith(ZOO_PREFIXES):  # no server-side paths from a text box
            raise MorphScopeError(f"{spec}: name a model as torchvision:NAME, keras:NAME or example:NAME")
        with st.spinner(f"Importing {plain(spec)}..."):
            doc = _seed_report(spec, None if spec.startswith("example:") else side)
    except MorphScopeError as err:
        st.error(plain(str(err)))
        return
    seed = doc["seed"]
    cols = st.columns(4)
    cols[0].metric("FLOPs", human_count(seed["flops"]))
    cols[1].metric("MACs", human_count(seed["macs"]))
    cols[2].metric("Params", human_count(seed["params"]))
    cols[3].metric("Size (kernel weights)", human_count(seed["size"]))
    count = st.column_config.NumberColumn(format="localized")
    st.dataframe([{k: _shown(v) for k, v in row.items()} for row in doc["layers"]], width="stretch",
                 column_config={"macs": count, "params": count})
    st.caption(doc["convention"])
