"""TreeRPO: tree-structured RL with hierarchical credit assignment for pass/fail tasks."""

__version__ = "0.1.0"
