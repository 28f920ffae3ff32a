"""vpt_ray: Video PreTraining (VPT) on Ray.

The pipeline stages live in one subpackage each: ``actions`` (keyboard/mouse and Crafter action spaces),
``models`` (VPT policy, IDM, official file I/O), ``envs`` (Crafter, MineRL, reward tables), ``data``
(recordings and shards), ``idm``, ``filter``, ``labeling``, ``bc``, ``rl`` (PPG, serving, metrics),
``ledger`` and ``cli``.
"""

__version__ = "0.1.0"
