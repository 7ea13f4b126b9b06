"""Mixed-precision remedies: per-site sensitivity, the search for a small set of sites, deployment cost.

A sibling of remedy.py (not ``remedy/``: a package of that name would shadow remedy.py while it exists)."""
