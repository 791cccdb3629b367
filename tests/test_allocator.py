"""The study's numbers do not depend on the C allocator (``make study`` preloads jemalloc).

``make study`` / ``make full`` preload jemalloc where it is installed, because glibc malloc's
free-list search costs a large model much of its CPU time. An allocator changes where memory
lives, not what is computed, unless some code reads memory it never wrote (``torch.empty``
without a fill): then the two allocators hand back different garbage. This test computes the
same study in two fresh processes, glibc and jemalloc, and compares every stored array
bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

JEMALLOC_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
    "/usr/local/lib/libjemalloc.so.2",
)
JEMALLOC = next((p for p in JEMALLOC_CANDIDATES if Path(p).exists()), None)

STUDY = """
import sys
from pathlib import Path

from codi_fixtures.config import BUNDLED_CHECKPOINT, ModelConfig, RunConfig
from codi_fixtures.models import load_model
from codi_fixtures.study.data import load_problems
from codi_fixtures.study.runs import compute_study

model = load_model(ModelConfig(ckpt=BUNDLED_CHECKPOINT, device="cpu"))
problems = load_problems(BUNDLED_CHECKPOINT / "eval.jsonl")[:12]
compute_study(model, problems, RunConfig(kinds=("mean", "zero", "resample")), Path(sys.argv[1]))
"""


def _study_arrays(cache: Path, preload: str | None) -> dict[str, np.ndarray]:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env["OMP_NUM_THREADS"] = "1"
    if preload:
        env["LD_PRELOAD"] = preload
    subprocess.run([sys.executable, "-c", STUDY, str(cache)], env=env, check=True, timeout=300)
    (npz,) = cache.glob("study-*.npz")
    with np.load(npz, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    meta = json.loads(str(arrays.pop("meta")))
    assert meta.pop("compute_wall_s") > 0  # the one stored number that is a measurement
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    return arrays


@pytest.mark.slow
@pytest.mark.skipif(JEMALLOC is None, reason="jemalloc is not installed (apt install libjemalloc2)")
def test_study_is_identical_under_glibc_and_jemalloc(tmp_path):
    glibc = _study_arrays(tmp_path / "glibc", None)
    jemalloc = _study_arrays(tmp_path / "jemalloc", JEMALLOC)
    assert glibc.keys() == jemalloc.keys()
    assert len(glibc) > 5
    for name, array in glibc.items():
        np.testing.assert_array_equal(jemalloc[name], array, err_msg=name)
