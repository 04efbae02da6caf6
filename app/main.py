"""`moesim dashboard`: the router. Each page is a file of app/pages/; one that is not there (yet) is left out,
so the app runs whatever subset of pages a checkout has."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

PAGES_DIR = Path(__file__).resolve().parent / "pages"
# file stem -> (title, icon), in the order of the navigation
PAGES = {
    "what_if": ("What-if", ":material/tune:"),
    "placement": ("Placement", ":material/grid_view:"),
    "planner": ("Planner", ":material/route:"),
    "accuracy": ("Accuracy", ":material/fact_check:"),
    "profiles": ("Profiles", ":material/memory:"),
    "traces": ("Traces", ":material/stacked_line_chart:"),
}

st.set_page_config(page_title="moesim", page_icon=":material/hub:", layout="wide")
pages = [st.Page(PAGES_DIR / f"{stem}.py", title=title, icon=icon, url_path=stem, default=stem == "what_if")
         for stem, (title, icon) in PAGES.items() if (PAGES_DIR / f"{stem}.py").is_file()]
st.navigation(pages).run()
