"""Chart builders the Accuracy, Profiles, Traces and Planner pages share: Altair (Vega-Lite) specifications of
data moesim computed, with log axes where sizes span decades. Layout only: no number is computed here."""

from __future__ import annotations

import altair as alt
import pandas as pd


def curves(frame: pd.DataFrame, x: str, y: str, color: str | None, x_title: str, y_title: str,
           log_x: bool = True, log_y: bool = False, tooltip: list[str] | None = None,
           points: pd.DataFrame | None = None, limits: pd.DataFrame | None = None) -> alt.LayerChart:
    """Lines of `y` over `x`, one per `color` value. `points`: measurements with the same columns, drawn as
    points over the lines; `limits`: a frame with column `y` (and `color`) drawn as dashed horizontal rules."""
    x_enc = alt.X(x, title=x_title, scale=alt.Scale(type="log") if log_x else alt.Undefined)
    y_enc = alt.Y(y, title=y_title, scale=alt.Scale(type="log") if log_y else alt.Undefined)
    basic = [x, y] + ([color] if color else [])
    enc = {"x": x_enc, "y": y_enc}
    if color:
        enc["color"] = alt.Color(color, title=color.replace("_", " "))
    layers = [alt.Chart(frame).mark_line(point=True).encode(**enc, tooltip=tooltip or basic)]
    if points is not None and len(points):
        layers.append(alt.Chart(points).mark_point(shape="diamond", size=60, filled=True).encode(**enc,
                                                                                                tooltip=basic))
    if limits is not None and len(limits):
        rule = {"y": alt.Y(y)}
        if color:
            rule["color"] = alt.Color(color)
        layers.append(alt.Chart(limits).mark_rule(strokeDash=[4, 4]).encode(**rule))
    # a fixed height: a chart drawn in a tab that is not shown yet would otherwise come out flat
    return alt.layer(*layers).properties(height=360).interactive()
