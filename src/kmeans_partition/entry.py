"""The ``kmeans-partition`` console script's target, kept free of imports.

Dask starts an embedded LocalCluster's workers with multiprocessing's *spawn*, which re-runs the
parent's main script in each worker, and the console script imports this module at its top. Were it
`kmeans_partition.cli`, every worker would load pydantic, the spec models and the operator's
builders (~9 MiB) without using them; the CLI is imported only when the command runs.
"""

from __future__ import annotations

from typing import Optional


def main(argv: Optional[list[str]] = None) -> int:
    from .cli import main as cli_main

    return cli_main(argv)
