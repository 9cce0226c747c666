"""Figure scripts: each calls simulations and theory, saves arrays with provenance, then draws.

Run all with ``python -m figures [--quick] [--out DIR] [--redraw]`` or one with
``python -m figures.<name>``. Library code (theory/, simulations/) never imports this package.
"""
