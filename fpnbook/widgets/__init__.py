"""Interactive explorers for the chapters (ipywidgets 8, JupyterLab 4).

Each explorer keeps its update logic in plain functions that take control values and
return what is drawn, so tests can call them without a browser; the widget only wires
controls to those functions. Nothing in fpnbook imports this package; chapters do.
"""
