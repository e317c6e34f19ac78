"""Training-free repair of the cuts (ReplaceMe): `fit` fits and fuses the linear maps,
`folder` writes and rebuilds a repaired model folder.

`from gptailor_merge.repair import repair_model` is the entry point the README shows.
"""

from gptailor_merge.repair.fit import RepairInfo, repair_model

__all__ = ["RepairInfo", "repair_model"]
