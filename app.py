"""MorphScope explorer: ``streamlit run app.py``. Navigation only; the views live in explorer/."""

import streamlit as st

from morphscope.explorer.views.explore import explorer_view
from morphscope.explorer.views.seed import seed_view


def main() -> None:
    st.set_page_config(page_title="MorphScope", layout="wide")
    st.navigation([st.Page(explorer_view, title="Explorer", default=True),
                   st.Page(seed_view, title="Seed report")]).run()


main()
