"""``python default_group_rules.py OUT_DIR LAUNCHER``: two processes (spawned, or the ones torchrun or srun started)
each write what they find of the default group's rules (tests/dist_worker.py) to OUT_DIR/rank<R>.json."""

import sys

from adet.engine import launch
from tests.dist_worker import check_default_group_rules

if __name__ == "__main__":
    launch(check_default_group_rules, 2, args=(sys.argv[1],), use_cuda=False, launcher=sys.argv[2])
