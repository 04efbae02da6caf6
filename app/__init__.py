"""The Streamlit dashboard (`moesim dashboard`): a thin router (main.py) and pages calling moesim's public API."""
