"""Natural-gradient machinery: flat parameters, Fisher-vector products, solvers and step rules.

Each piece is a small object built by Hydra from a ``_target_`` node and injected into the one
natural-gradient updater (polopt.updaters.natural_gradient); NPG, truncated NPG and TRPO differ only
in which pieces their configs name.
"""
