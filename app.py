"""MorphScope explorer: ``streamlit run app.py``. Navigation only; the views live in explorer/."""

import streamlit as st

from morphscope.explorer.views.explore import explorer_view
from morphscope.explorer.views.seed import seed_view
from morphscope.importers.frameworks import load_triton_first


def main() -> None:
    load_triton_first()  # the app loads PyTorch and Keras models in one process
    st.set_page_config(page_title="MorphScope", layout="wide")
    st.navigation([st.Page(explorer_view, title="Explorer", default=True),
                   st.Page(seed_view, title="Seed report")]).run()


main()
