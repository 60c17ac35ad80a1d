"""The entry point of ranks 1..N-1 of a run: ``python -m rlhf_lab.run.worker SPEC``.

Rank 0 writes the spec (the composed config, the run directory, the logger group, the overrides) and
starts each worker with it (:meth:`rlhf_lab.distributed.Ranks.launch`); a worker joins the process group
and walks the same experiment, building, writing and evaluating nothing.
"""

from __future__ import annotations

import logging
import os
import pickle
import sys
from pathlib import Path


def main(spec_path: str) -> int:
    """A worker rank: the experiment the spec at ``spec_path`` describes."""
    from rlhf_lab.distributed import Ranks
    from rlhf_lab.errors import RlhfLabError
    from rlhf_lab.plugin_manager import get_plugin_manager
    from rlhf_lab.run import preflight
    from rlhf_lab.run.experiment import build_components, run_experiment
    from rlhf_lab.run.plan import make_plan

    logging.basicConfig(level=logging.INFO, format=f"[rank {os.environ.get('RANK')}] %(asctime)s %(name)s %(levelname)s %(message)s")
    spec = pickle.loads(Path(spec_path).read_bytes())
    try:
        plan = make_plan(spec["config"], get_plugin_manager().registry, tuple(spec["overrides"]), spec.get("in_sweep", False))
        trainer_plan = preflight.check_trainer(plan, worker=True)
        components = build_components(plan)
        ranks = Ranks.join(trainer_plan.device_type)
        try:
            run_experiment(plan, trainer_plan, components, Path(spec["run_dir"]), spec["group"], ranks)
        finally:
            ranks.close()
    except RlhfLabError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
