"""polopt: the policy-optimization family on one shared rollout and advantage layer."""

__version__ = "0.1.0"
